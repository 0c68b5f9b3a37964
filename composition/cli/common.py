"""What several commands share: the composition and input options, and loading the model after every cheap check."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


# --- shared argument groups ---------------------------------------------------------
def add_composition_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a composition config (YAML, as the app's Export tab saves it); the options below override it")
    p.add_argument("--experts", nargs="+", metavar="DIR", help="expert folders, or folders of expert folders (default: the bundled experts)")
    p.add_argument("--base", default=None, help="base LLM: a local folder, a .gguf file or a hub id (default: the offline SmolLM2-135M-Instruct)")
    p.add_argument("--lambda", dest="lambdas", nargs="+", default=[], metavar="NAME=V",
                   help="text merge coefficient per expert, e.g. image=0.4 audio=0.3, or image=auto "
                        "(default: auto, 1/K over the experts with an input)")
    p.add_argument("--mu", dest="mus", nargs="+", default=[], metavar="MODALITY=V",
                   help="modality delta coefficient per modality, e.g. audio=0.8 (default 1)")
    p.add_argument("--method-param", dest="method_params", nargs="+", default=[], metavar="METHOD.PARAM=V",
                   help="a merge method's hyper-parameter, e.g. ties.density=0.3")
    p.add_argument("--merge-all-experts", action="store_true", default=None,
                   help="compositions merge every selected expert's text delta whatever inputs are given (the "
                        "original's merged checkpoints; default: only the experts with an input)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="where the model runs (default: cuda when available)")


def add_generation_args(p: argparse.ArgumentParser) -> None:
    """Decoding options (default: the config's, else greedy with the studio's answer length)."""
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length in tokens (default 48)")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default 0)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (default 1)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default 0)")


def add_input_args(p: argparse.ArgumentParser) -> None:
    from modalities import MODALITY_NAMES

    for modality in MODALITY_NAMES:
        p.add_argument(f"--{modality}", action="append", default=[], metavar="FILE", help=f"{modality} input file (repeatable)")


def parse_assignments(items: Sequence[str], what: str, *, auto: bool = False) -> dict[str, float | None]:
    """``NAME=NUMBER`` items (``NAME=auto`` too when ``auto``: None)."""
    from ..errors import CompositionError

    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if auto and raw.strip().lower() == "auto":
            value = None
        else:
            try:
                value = float(raw)
            except ValueError:
                value = "bad"
        if not sep or not key or value == "bad":
            raise CompositionError(f"{what} {item!r} is not NAME=NUMBER (e.g. image=0.5{' or image=auto' if auto else ''}).")
        values[key] = value
    return values


def method_params_from(items: Sequence[str]) -> dict[str, dict[str, float]]:
    """``--method-param METHOD.PARAM=V`` -> ``{method: {param: value}}`` (``ties@core`` shares ``ties``' parameters)."""
    from ..errors import CompositionError

    per_method: dict[str, dict[str, float]] = {}
    for key, value in parse_assignments(items, "--method-param").items():
        method, dot, param = key.partition(".")
        if not dot:
            raise CompositionError(f"--method-param {key!r} must be METHOD.PARAM=V, e.g. ties.density=0.3.")
        per_method.setdefault(method.partition("@")[0], {})[param] = value
    return per_method


def variant_names(names: Sequence[str] | None) -> list[str] | None:
    """``--variants`` as names (commas or spaces); None when not given."""
    return None if not names else [n.strip() for name in names for n in name.split(",") if n.strip()]


def composition_config(args: argparse.Namespace, entries):
    """The composition this command runs: what the expert folders ship with (composition.json), then
    ``--config FILE``, then the flags. Every name is checked against the expert folders found."""
    from ..config import CompositionConfig, load_config_file, shipped_config
    from ..errors import CompositionError

    names = {e.config.name: e for e in entries}
    config = shipped_config(getattr(args, "experts", None))
    if getattr(args, "config", None):
        given, notes = load_config_file(args.config, loaded=names)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        config = given.replace(lambdas={**config.lambdas, **given.lambdas}, mus={**config.mus, **given.mus},
                               merge_all_experts=config.merge_all_experts or given.merge_all_experts)
    flag_lambdas = parse_assignments(args.lambdas, "--lambda", auto=True)
    unknown = sorted(set(flag_lambdas) - set(names))
    if unknown:
        raise CompositionError(f"--lambda names expert {unknown[0]!r}, which is not loaded; loaded experts: {sorted(names)}.")
    lambdas = {**config.lambdas, **flag_lambdas}
    params = method_params_from(args.method_params)
    variants = variant_names(getattr(args, "variants", None)) or config.variants
    changes = dict(lambdas=lambdas, mus={**config.mus, **parse_assignments(args.mus, "--mu")}, variants=variants,
                   method_params={**config.method_params, **{m: {**config.method_params.get(m, {}), **p} for m, p in params.items()}})
    if getattr(args, "merge_all_experts", None):
        changes["merge_all_experts"] = True
    for key in ("max_new_tokens", "temperature", "top_p", "seed"):
        if getattr(args, key, None) is not None:
            changes[key] = getattr(args, key)
    config = config.replace(**changes)
    running = {v.partition("@")[0] for v in (config.variants or [])} | {m.partition("@")[0] for m in config.methods}
    unused = sorted(set(params) - running)
    if unused:
        raise CompositionError(f"--method-param given for {unused[0]!r}, which is not among the variants; add it to --variants.")
    config.check_against(names)
    return config


def build_model(args: argparse.Namespace, entries):
    """Load the base and the experts (the slow part, after every cheap check passed)."""
    from ..base_llm import load_base_llm
    from ..composer import ComposedModel

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from ..errors import CompositionError

        raise CompositionError("--device cuda was asked for but no CUDA GPU is available; use --device cpu.")
    base = load_base_llm(args.base, device=device)
    cm = ComposedModel(base)
    for entry in entries:
        cm.load_expert(entry.folder)
    return cm


def input_files(args: argparse.Namespace) -> dict[str, list[str]]:
    """``{modality: [file]}`` from the ``--<modality>`` options (one per registered modality)."""
    from modalities import MODALITY_NAMES

    return {m: getattr(args, m) for m in MODALITY_NAMES if getattr(args, m)}
