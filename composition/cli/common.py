"""What several commands share: the composition and input options, and loading the model after every cheap check."""
from __future__ import annotations

import argparse
from typing import Sequence


# --- shared argument groups ---------------------------------------------------------
def add_composition_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experts", nargs="+", metavar="DIR", help="expert folders, or folders of expert folders (default: the bundled experts)")
    p.add_argument("--base", default=None, help="base LLM: a local folder, a .gguf file or a hub id (default: the offline SmolLM2-135M-Instruct)")
    p.add_argument("--lambda", dest="lambdas", nargs="+", default=[], metavar="NAME=V",
                   help="DAMC text merge coefficient per expert, e.g. image=0.4 audio=0.3 (default 1/K)")
    p.add_argument("--mu", dest="mus", nargs="+", default=[], metavar="MODALITY=V",
                   help="modality delta coefficient per modality, e.g. audio=0.8 (default 1)")
    p.add_argument("--method-param", dest="method_params", nargs="+", default=[], metavar="METHOD.PARAM=V",
                   help="a merge method's hyper-parameter, e.g. ties.density=0.3")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="where the model runs (default: cuda when available)")


def add_input_args(p: argparse.ArgumentParser) -> None:
    from modalities import MODALITY_NAMES

    for modality in MODALITY_NAMES:
        p.add_argument(f"--{modality}", action="append", default=[], metavar="FILE", help=f"{modality} input file (repeatable)")


def parse_assignments(items: Sequence[str], what: str) -> dict[str, float]:
    from ..errors import CompositionError

    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        try:
            value = float(raw)
        except ValueError:
            value = None
        if not sep or not key or value is None:
            raise CompositionError(f"{what} {item!r} is not NAME=NUMBER (e.g. image=0.5).")
        values[key] = value
    return values


def coefficients_from_args(args: argparse.Namespace):
    """--lambda / --mu over the defaults the expert folders ship with (composition.json), over the paper's."""
    from ..discovery import default_coefficients
    from ..variants import Coefficients

    shipped = default_coefficients(getattr(args, "experts", None))
    return Coefficients(lambdas={**shipped.lambdas, **parse_assignments(args.lambdas, "--lambda")},
                        mus={**shipped.mus, **parse_assignments(args.mus, "--mu")})


def variant_specs(names: Sequence[str], method_params: Sequence[str]):
    """Parse variant names (commas or spaces) and attach method hyper-parameters."""
    from ..errors import CompositionError
    from ..variants import VariantSpec

    per_method: dict[str, dict[str, float]] = {}
    for key, value in parse_assignments(method_params, "--method-param").items():
        method, dot, param = key.partition(".")
        if not dot:
            raise CompositionError(f"--method-param {key!r} must be METHOD.PARAM=V, e.g. ties.density=0.3.")
        per_method.setdefault(method.partition("@")[0], {})[param] = value  # ties@core shares ties' parameters
    flat = [n for name in names for n in name.split(",") if n.strip()]
    specs = [VariantSpec.parse(n, per_method.get(n.strip().partition("@")[0])) for n in flat]
    unused = sorted(set(per_method) - {s.method for s in specs if s.method})
    if unused:
        raise CompositionError(f"--method-param given for {unused[0]!r}, which is not among the variants; add it to --variants.")
    return specs


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


def check_coefficient_names(coefficients, entries) -> None:
    from ..errors import CompositionError

    names = {e.config.name for e in entries}
    unknown = sorted(set(coefficients.lambdas) - names)
    if unknown:
        raise CompositionError(f"--lambda names expert {unknown[0]!r}, which is not loaded; loaded experts: {sorted(names)}.")


