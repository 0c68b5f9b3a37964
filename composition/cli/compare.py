"""``python -m composition compare``: one question, every composition and expert side by side."""
from __future__ import annotations

import argparse
import json
import sys

from .common import add_composition_args, add_generation_args, add_input_args, build_model, composition_config, input_files
from .registry import command


@command("compare", "answer a question with several compositions and experts side by side")
def build_compare(p: argparse.ArgumentParser):
    p.add_argument("--question", required=True, help="the question (text)")
    add_input_args(p)
    add_composition_args(p)
    p.add_argument("--variants", nargs="+", default=None, metavar="NAMES",
                   help="NaiveMC, DAMC, expert:<name>, base, or a merge method; default: NaiveMC, DAMC and every expert "
                        "with an input")
    add_generation_args(p)
    p.add_argument("--sequential", action="store_true", help="run variants one by one instead of in one batch")
    p.add_argument("--json", action="store_true", help="print JSON: {\"variants\": [{name, kind, answer, seconds, new_tokens, "
                   "experts, coefficients: {lambdas, mus[, hyper]}, notes}, ...], \"skipped\": [{name, reason}]}")
    return run_compare


def run_compare(args: argparse.Namespace) -> int:
    from ..discovery import scan_experts
    from ..errors import CompositionError
    from ..inputs import decoder_needs, load_inputs
    from ..plan import describe_coefficients
    from ..world_notes import world_notes

    if not args.question.strip():
        raise CompositionError("--question is empty; give the question to answer.")
    entries = scan_experts(args.experts)
    config = composition_config(args, entries)  # every name checked before any model loads
    chosen = [e.config for e in entries if config.experts is None or e.config.name in config.experts]
    inputs = load_inputs(input_files(args), decoder_needs(chosen))
    cm = build_model(args, entries)
    plan = config.plan(cm, {i.modality for i in inputs})  # the engine decides who takes part, and with what
    answers = cm.compare(args.question, inputs, plan, config=config.generation(), batched=not args.sequential)
    notes = world_notes(cm.experts.values(), inputs)
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
