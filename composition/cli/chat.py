"""``python -m composition chat``: a conversation in the terminal with every composition and expert.

    you> :image examples/image-example.png
    you> What shape is it?
    == DAMC  (1.20 s)
    A star.
    you> What colour?

A line is a user turn; ``:image PATH`` (``:audio``, ``:video``, ``:point``) attaches a file to
the next turn, ``:reset`` starts over, ``:quit`` or end of input ends. Turns can also be piped
in (one per line) for scripts. Each variant keeps its own history and continues its KV cache
from the turn before.
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid

from .common import add_composition_args, add_generation_args, build_model, composition_config
from .registry import command

HELP = ("type a question; :image PATH, :audio PATH, :video PATH or :point PATH attaches a file to the next turn; "
        ":reset starts a new conversation; :quit ends")


@command("chat", "a conversation in the terminal with every composition and expert (reads turns from stdin)")
def build_chat(p: argparse.ArgumentParser):
    add_composition_args(p)
    p.add_argument("--variants", nargs="+", default=None, metavar="NAMES",
                   help="NaiveMC, DAMC, expert:<name>, base, or a merge method; default: NaiveMC, DAMC and every expert "
                        "with an input so far")
    add_generation_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON line per turn: {turn, variants: [{name, answer, "
                   "seconds, coefficients, notes}]}")
    return run_chat


def run_chat(args: argparse.Namespace) -> int:
    from modalities import MODALITY_NAMES

    from ..composer import Turn
    from ..discovery import scan_experts
    from ..errors import CompositionError
    from ..inputs import decoder_needs, load_inputs
    from ..plan import describe_coefficients

    entries = scan_experts(args.experts)
    config = composition_config(args, entries)
    chosen = [e.config for e in entries if config.experts is None or e.config.name in config.experts]
    needs = decoder_needs(chosen)
    cm = build_model(args, entries)
    if config.experts is not None:
        cm = cm.subset(config.experts)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"{len(cm.experts)} expert(s) loaded; {HELP}", file=sys.stderr)
    session, turns, answers, pending, number = uuid.uuid4().hex, [], {}, {}, 0
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith(":"):
            word, _, rest = line[1:].partition(" ")
            if word in ("quit", "exit"):
                break
            if word == "reset":
                cm.kv_cache.forget(session)
                session, turns, answers, pending = uuid.uuid4().hex, [], {}, {}
                print("(a new conversation)", file=sys.stderr)
                continue
            if word in MODALITY_NAMES and rest.strip():
                (item,) = load_inputs({word: [rest.strip()]}, needs)  # decoded now: a bad file fails here, in one line
                pending.setdefault(word, []).append(item)
                print(f"(attached {item.source_name} to the next turn)", file=sys.stderr)
                continue
            raise CompositionError(f"unknown command {line!r}; {HELP}.")
        inputs = tuple(item for m in MODALITY_NAMES for item in pending.get(m, []))
        turns.append(Turn(line, inputs))
        pending = {}
        number += 1
        plan = config.plan(cm, {i.modality for t in turns for i in t.inputs})
        replies = cm.chat(turns, plan, config.generation(), answers, session=session)
        for reply in replies:
            answers.setdefault(reply.variant.name, []).extend([*reply.earlier, reply.token_ids])
        if args.json:
            print(json.dumps({"turn": number, "variants": [
                {"name": r.variant.name, "kind": r.variant.kind.value, "answer": r.text, "seconds": round(r.seconds, 4),
                 "coefficients": r.variant.coefficients_json(), "notes": r.notes} for r in replies]}), flush=True)
            continue
        for r in replies:
            used = describe_coefficients(r.variant.coefficients_json()) if r.variant.kind.composes else ""
            extra = "".join(f"\n  {n}" for n in ([f"coefficients: {used}"] if used else []) + [f"note: {n}" for n in r.notes])
            print(f"== {r.variant.name}  ({r.seconds:.2f} s){extra}\n{r.text}\n", flush=True)
    return 0
