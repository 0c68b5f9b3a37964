"""Command line: ``python -m composition <command> ...`` (a contract scripts rely on).

Every user error ends with a non-zero exit and one clear line on stderr, never a
traceback. Inputs, expert folders, variant names and coefficients are all checked
before any model loads, so a mistake fails in about a second.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

from checks import UserError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1

# name -> (help, build): build fills the subparser and returns the handler (args -> exit code).
COMMANDS: dict[str, tuple[str, Callable]] = {}


def command(name: str, help_text: str):
    """Register a subcommand: the decorated function fills its parser and returns the handler."""
    def wrap(build: Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]):
        COMMANDS[name] = (help_text, build)
        return build
    return wrap


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
    from .errors import CompositionError

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
    from .catalog import default_coefficients
    from .variants import Coefficients

    shipped = default_coefficients(getattr(args, "experts", None))
    return Coefficients(lambdas={**shipped.lambdas, **parse_assignments(args.lambdas, "--lambda")},
                        mus={**shipped.mus, **parse_assignments(args.mus, "--mu")})


def variant_specs(names: Sequence[str], method_params: Sequence[str]):
    """Parse variant names (commas or spaces) and attach method hyper-parameters."""
    from .errors import CompositionError
    from .variants import VariantSpec

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
    from .base_llm import load_base_llm
    from .composer import ComposedModel

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from .errors import CompositionError

        raise CompositionError("--device cuda was asked for but no CUDA GPU is available; use --device cpu.")
    base = load_base_llm(args.base, device=device)
    cm = ComposedModel(base)
    for entry in entries:
        cm.load_expert(entry.folder)
    return cm


# --- compare ------------------------------------------------------------------------
@command("compare", "answer a question with several compositions and experts side by side")
def build_compare(p: argparse.ArgumentParser):
    p.add_argument("--question", required=True, help="the question (text)")
    add_input_args(p)
    add_composition_args(p)
    p.add_argument("--variants", nargs="+", default=None, metavar="NAMES",
                   help="NaiveMC, DAMC, expert:<name>, or a merge method; default: NaiveMC, DAMC and every expert with an input")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sequential", action="store_true", help="run variants one by one instead of in one batch")
    p.add_argument("--json", action="store_true", help="print JSON: {\"variants\": [{name, kind, answer, seconds, new_tokens, "
                   "experts, coefficients: {lambdas, mus[, hyper]}, notes}, ...], \"skipped\": [{name, reason}]}")
    return run_compare


def run_compare(args: argparse.Namespace) -> int:
    from .catalog import load_inputs, scan_experts, world_notes
    from .errors import CompositionError
    from .generate import GenerationConfig
    from .plan import describe_coefficients

    if not args.question.strip():
        raise CompositionError("--question is empty; give the question to answer.")
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    coefficients = coefficients_from_args(args)
    specs = variant_specs(args.variants, args.method_params) if args.variants else None
    files = input_files(args)
    inputs = load_inputs(files)
    entries = scan_experts(args.experts)
    check_coefficient_names(coefficients, entries)
    cm = build_model(args, entries)
    plan = cm.plan({i.modality for i in inputs}, specs, coefficients)  # the engine decides who takes part, and with what
    answers = cm.compare(args.question, inputs, plan, config=config, batched=not args.sequential)
    notes = world_notes(cm.experts.values(), files)
    for a in answers:
        a.notes += [notes[n] for n in a.experts if n in notes]
    if args.json:
        print(json.dumps({"variants": [a.to_json() for a in answers],
                          "skipped": [{"name": n, "reason": why} for n, why in plan.skipped.items()]}, indent=2))
    else:
        for name, why in plan.skipped.items():
            print(f"skipped {name}: {why}", file=sys.stderr)
        for a in answers:
            used = describe_coefficients(a.coefficients) if a.kind.composes else ""
            lines = "".join(f"\n  {n}" for n in ([f"coefficients: {used}"] if used else []) + [f"note: {n}" for n in a.notes])
            print(f"== {a.name}  ({a.seconds:.2f} s, {a.new_tokens} tokens){lines}\n{a.answer}\n")
    return 0


def input_files(args: argparse.Namespace) -> dict[str, list[str]]:
    """``{modality: [file]}`` from the ``--<modality>`` options (one per registered modality)."""
    from modalities import MODALITY_NAMES

    return {m: getattr(args, m) for m in MODALITY_NAMES if getattr(args, m)}


def check_coefficient_names(coefficients, entries) -> None:
    from .errors import CompositionError

    names = {e.config.name for e in entries}
    unknown = sorted(set(coefficients.lambdas) - names)
    if unknown:
        raise CompositionError(f"--lambda names expert {unknown[0]!r}, which is not loaded; loaded experts: {sorted(names)}.")


# --- export -------------------------------------------------------------------------
@command("export", "write a composition as a plain transformers checkpoint plus its modality parts")
def build_export(p: argparse.ArgumentParser):
    p.add_argument("--variant", default="DAMC", help="the variant to export (default DAMC)")
    p.add_argument("--out", required=True, help="an empty or new folder")
    p.add_argument("--modalities", nargs="+", default=None, help="which modalities the composition covers (default: all loaded experts')")
    add_composition_args(p)
    return run_export


def run_export(args: argparse.Namespace) -> int:
    from .catalog import scan_experts
    from .errors import CompositionError
    from .export import export_composition

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CompositionError(f"--out {out.name!r} exists and is not an empty folder; choose a new folder.")
    coefficients = coefficients_from_args(args)
    specs = variant_specs([args.variant], args.method_params)
    entries = scan_experts(args.experts)
    check_coefficient_names(coefficients, entries)
    cm = build_model(args, entries)
    start = time.perf_counter()
    export_composition(cm, specs[0], out, coefficients=coefficients, modalities=set(args.modalities) if args.modalities else None)
    print(f"exported {specs[0].name} to {out} in {time.perf_counter() - start:.1f} s")
    return 0


# --- experts ------------------------------------------------------------------------
@command("experts", "list experts (default: the bundled ones)")
def build_experts(p: argparse.ArgumentParser):
    p.add_argument("--experts", nargs="+", metavar="DIR")
    p.add_argument("--json", action="store_true")
    return run_experts


def run_experts(args: argparse.Namespace) -> int:
    from .catalog import scan_experts

    entries = scan_experts(args.experts)
    rows = [{"name": e.config.name, "modality": e.config.modality, "training": e.config.training,
             "base": e.config.base_model_name, "encoder": e.config.encoder.kind, "folder": e.folder.name} for e in entries]
    if args.json:
        print(json.dumps({"experts": rows}, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<20} {r['modality']:<6} {r['training']:<10} base={r['base']} encoder={r['encoder']}")
    return 0


# --- bench --------------------------------------------------------------------------
@command("bench", "performance figures, each beside its baseline measured in the same run")
def build_bench(p: argparse.ArgumentParser):
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="where models run (default: cuda when available); "
                   "the 7B-shaped GPU sections need cuda")
    p.add_argument("--quick", action="store_true", help="a fast smoke run on tiny random models (checks, not figures)")
    p.add_argument("--only", nargs="+", default=[], metavar="SECTION",
                   help="run only these sections (side_by_side_one_input, side_by_side_all_inputs, recompose_online, "
                        "recompose_materialized, mcub, methods, gpu); --only gpu needs only torch and transformers "
                        "(with --device cpu --quick: a rehearsal of its code path)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per variant (default 32; 4 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure, the median is reported (default 3; 1 with --quick)")
    p.add_argument("--mcub-items", type=int, default=4, help="MCUB items to evaluate (default 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object with all figures (progress lines go to stderr)")
    return run_bench


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from .benchmark import BenchConfig, run_benchmark, to_json
    from .errors import CompositionError

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CompositionError("--device cuda was asked for but no CUDA GPU is available; use --device cpu.")
    config = BenchConfig(device=device, quick=args.quick, only=tuple(args.only), mcub_items=args.mcub_items,
                         new_tokens=args.new_tokens if args.new_tokens is not None else 4 if args.quick else 32,
                         repeats=args.repeats if args.repeats is not None else 1 if args.quick else 3)
    emit = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else (lambda line: print(line, flush=True))
    result = run_benchmark(config, emit)
    if args.json:
        print(to_json(result))
    return 0


# --- entry point --------------------------------------------------------------------
def make_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    from . import commands  # noqa: F401  (its modules register their commands on import)

    parser = argparse.ArgumentParser(prog="python -m composition", description="MLLM Composition Studio command line")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for internal errors")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers = {}
    for name, (help_text, build) in COMMANDS.items():
        handlers[name] = build(sub.add_parser(name, help=help_text, description=help_text))
    return parser, handlers


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def quiet_libraries() -> None:
    """Keep library chatter (progress bars, info logs) off the CLI's output."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.showwarning = _one_line_warning
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = make_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        return handlers[args.command](args)
    except UserError as exc:  # the project's own user errors; a ValueError from a library is a bug, below
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        if args.debug:
            raise
        print(f"error: internal error ({type(exc).__name__}: {exc}); rerun with --debug for details", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
