"""What several commands share: the composition and input options, and loading the model after every cheap check."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


# --- shared argument groups ---------------------------------------------------------
def add_composition_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a composition config (YAML, as the app's Export tab saves it); the options below override it")
    p.add_argument("--experts", nargs="+", metavar="DIR", help="expert folders, or folders of expert folders (default: the bundled experts)")
    p.add_argument("--base", default=None, help="base LLM: a local folder, a .gguf file or a hub id (default: the offline SmolLM2-135M-Instruct)")
    p.add_argument("--lambda", dest="lambdas", nargs="+", default=[], metavar="NAME=V",
                   help="text merge coefficient per expert, e.g. image=0.4 audio=0.3, or image=auto "
                        "(default: auto, 1/K over the experts with an input); a schedule over the layers: "
                        "image=0,0.5,1 (anchors, interpolated as mergekit does), or YAML with module filters: "
                        "image='[{filter: self_attn, value: [0, 1]}, {value: 0}]'")
    p.add_argument("--lambda-scale", dest="lambda_scale", type=float, default=None, metavar="S",
                   help="every auto λ becomes S·(1/K) per expert, for the shared composition (NaiveMC) and DAMC alike; "
                        "a λ given with --lambda is never scaled (default 1: the paper's 1/K)")
    p.add_argument("--mu", dest="mus", nargs="+", default=[], metavar="MODALITY=V",
                   help="modality delta coefficient per modality, e.g. audio=0.8 (default 1); a schedule too, "
                        "e.g. audio=1,0.5")
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


def parse_assignments(items: Sequence[str], what: str, *, auto: bool = False, schedules: bool = False) -> dict:
    """``NAME=NUMBER`` items (``NAME=auto`` too when ``auto``: None). With ``schedules`` a value may be a
    schedule over layers: anchors ``image=0,0.5,1`` or YAML ``image='[{filter: self_attn, value: 1}]'``."""
    from ..errors import CompositionError
    from ..schedules import parse_text
    from ..variants import COEF_RANGE

    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CompositionError(f"{what} {item!r} is not NAME=NUMBER (e.g. image=0.5{' or image=auto' if auto else ''}"
                                   f"{' or image=0,0.5,1 over the layers' if schedules else ''}).")
        if auto and raw.strip().lower() == "auto":
            values[key] = None
        elif schedules:
            values[key] = parse_text(raw, f"{what} {key}", COEF_RANGE)
        else:
            try:
                values[key] = float(raw)
            except ValueError:
                raise CompositionError(f"{what} {item!r} is not NAME=NUMBER (e.g. image=0.5"
                                       f"{' or image=auto' if auto else ''}).") from None
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
    from ..config import load_config_file, shipped_config
    from ..errors import CompositionError

    names = {e.config.name: e for e in entries}
    config = shipped_config(getattr(args, "experts", None))
    if getattr(args, "config", None):
        given, notes = load_config_file(args.config, loaded=names)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        config = given.replace(lambdas={**config.lambdas, **given.lambdas}, mus={**config.mus, **given.mus},
                               merge_all_experts=config.merge_all_experts or given.merge_all_experts)
    flag_lambdas = parse_assignments(args.lambdas, "--lambda", auto=True, schedules=True)
    unknown = sorted(set(flag_lambdas) - set(names))
    if unknown:
        raise CompositionError(f"--lambda names expert {unknown[0]!r}, which is not loaded; loaded experts: {sorted(names)}.")
    lambdas = {**config.lambdas, **flag_lambdas}
    params = method_params_from(args.method_params)
    variants = variant_names(getattr(args, "variants", None)) or config.variants
    changes = dict(lambdas=lambdas, mus={**config.mus, **parse_assignments(args.mus, "--mu", schedules=True)}, variants=variants,
                   method_params={**config.method_params, **{m: {**config.method_params.get(m, {}), **p} for m, p in params.items()}})
    if getattr(args, "merge_all_experts", None):
        changes["merge_all_experts"] = True
    if getattr(args, "lambda_scale", None) is not None:
        changes["lambda_scale"] = args.lambda_scale
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


def add_study_args(p: argparse.ArgumentParser, data_metavar: str, data_help: str, experts_help: str,
                   files_what: str) -> None:
    """The options every paired study (``interference``, ``schedules``) shares: its items, the model, the
    batch, the predictions files and resuming, the bootstrap."""
    p.add_argument("--data", default="synth-4", metavar=data_metavar, help=data_help)
    p.add_argument("--answers", default=None, metavar="FILE", help="the gold answers file of --data, joined on id")
    p.add_argument("--data-root", default=None, metavar="DIR", help="folder the file's relative paths resolve against")
    p.add_argument("--seed", type=int, default=0, help="MCUB-synth seed (default 0)")
    p.add_argument("--synth-items", type=int, default=200, help="items per MCUB-synth set (default 200)")
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("--experts", nargs="+", metavar="DIR", help=experts_help)
    p.add_argument("--base", default=None, help="base LLM (default: the offline SmolLM2-135M-Instruct)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="where the model runs")
    p.add_argument("--batch-items", type=int, default=8, help="items per batch (default 8)")
    p.add_argument("--predictions-dir", default=None, metavar="DIR",
                   help=f"where the {files_what} predictions files go (default: next to the data)")
    p.add_argument("--resume", action="store_true", help="continue a stopped run from its predictions files")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")


@dataclass
class StudyItems:
    """What a paired study (``interference``, ``schedules``) runs on: items, their scoring rule, and where its
    predictions files go."""

    items: list
    rule: object  # evaluation.scoring.ScoringRule
    stem: str
    data: dict  # what the items are, recorded in the result
    first_path: Path  # the first question file (the predictions go next to it by default)


def study_items(args, stem_suffix: str = "") -> StudyItems:
    """``--data`` (a question file, or an MCUB-synth kind with ``--seed``/``--synth-items``), ``--limit``: the items
    and their scoring rule, every gold answer checked, before anything loads."""
    from ..errors import CompositionError
    from ..evaluation import SYNTH_KINDS, load_question_set, synth_sets
    from ..evaluation.scoring import default_scoring, detect_family, rule_for

    for flag, value in (("--limit", args.limit), ("--batch-items", args.batch_items), ("--synth-items", args.synth_items)):
        if value is not None and value < 1:
            raise CompositionError(f"{flag} {value}; expected a positive integer.")
    if args.data in SYNTH_KINDS:
        if args.answers or args.data_root:
            raise CompositionError("--answers and --data-root apply to question files; MCUB-synth sets carry their answers.")
        sets = [load_question_set(p) for p in synth_sets(args.data, args.seed, args.synth_items).values()]
        stem = f"mcub-{args.data.replace('-', '')}-seed{args.seed}"
        data = {"data": args.data, "seed": args.seed, "synth_items": args.synth_items}
    else:
        sets = [load_question_set(args.data, answers=args.answers, data_root=args.data_root)]
        stem = Path(args.data).stem
        data = {"data": Path(args.data).name}
    items = [item for s in sets for item in s.items[: args.limit]]
    data.update({"limit": args.limit, "items": len(items)})
    family, _ = detect_family(sets[0].names, [i.answer for i in items], all(i.synth for i in items))
    rule = rule_for(default_scoring(family), family)
    for item in items:
        rule.check_gold(item.answer, f"item {item.id!r}")
    return StudyItems(items, rule, stem + stem_suffix, data, sets[0].path)


def items_line(data: dict, n_items: int) -> str:
    """"200 items (synth-4 seed 6173)": what a study ran on, for its text output."""
    seed = "" if data.get("seed") is None else f" seed {data['seed']}"
    return f"{n_items} items ({data.get('data')}{seed})"


def study_settings(args, cm, entries, study: StudyItems, variants: list[str], coefficients) -> tuple[Path, dict]:
    """(the predictions folder, the run settings a resumed study must match: the experts' digests, the base,
    the prompt, the scoring, the batch, the variants, the coefficients and the items)."""
    from ..discovery import folder_digest
    from ..evaluation import DEFAULT_CONFIG
    from ..evaluation import predictions as files

    folder, _ = files.output_paths(study.first_path, study.stem)
    folder = Path(args.predictions_dir) if args.predictions_dir else folder.parent
    settings = files.run_settings(
        experts={e.config.name: folder_digest(e.folder) for e in entries}, base_sha256=getattr(cm.base, "sha256", None),
        prompt="studio", config=DEFAULT_CONFIG, template=cm.base.template.name, scoring=study.rule.name,
        batch_items=args.batch_items, variants=variants, coefficients=coefficients, method_params=[], processes=1)
    settings["items"] = [item.id for item in study.items]  # a resumed run must answer the same items
    return folder, settings
