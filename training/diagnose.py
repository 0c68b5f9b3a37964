"""Why does a variant miss MCUB-synth items? Split its answers into their two steps.

    python -m training.diagnose answers --data ITEMS.json [...] --predictions ITEMS-predictions.jsonl [--json]
    python -m training.diagnose lookup [--variants NAMES] [--n 48] [--experts DIR ...] [--json]

Our experts answer option questions by naming the option, then its letter ("cone (B)"), and
MCUB scores the letter. A wrong letter has two possible causes, and they need different fixes:

- ``answers`` reads a predictions file of ``python -m composition mcub`` on an MCUB-synth set
  (its items carry ``meta.options`` and ``meta.answer_category``) and reports per variant:
  ``letter`` (MCUB's accuracy), ``named`` (the first option named in the answer is the common
  one: what the variant recognised and combined) and ``agree`` (the letter is the named
  option's letter: the lookup step). ``named`` well above ``letter`` with a low ``agree``
  means the variant finds the answer and then writes the wrong letter.
- ``lookup`` measures that second step alone: text-only questions, the answer's name given
  ("cone ("), is the next token the option's letter? For the base LLM and each variant.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Iterable, Mapping

from .instructions import LETTERS


def named_option(answer: str, options: list[str]) -> str | None:
    """The option the answer names first ("cone (C)" -> "cone"), matched as a whole word, or None."""
    best: tuple[int, str] | None = None
    for option in options:
        match = re.search(rf"(?<![a-z]){re.escape(option.lower())}(?![a-z])", answer.lower())
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), option)
    return best[1] if best else None


def answer_breakdown(items: Iterable[Mapping], predictions: Iterable[Mapping]) -> dict[str, dict[str, float]]:
    """Per variant: {"items", "letter", "named", "agree"} (fractions of its predictions).

    Args:
        items: MCUB-synth items (each with ``id`` and ``meta.options`` / ``meta.answer_category``).
        predictions: lines of a predictions file ({"id", "variant", "answer", "predicted", "correct"}).
    """
    meta = {}
    for item in items:
        m = item.get("meta") or {}
        if "options" not in m or "answer_category" not in m:
            raise ValueError(f"item {item.get('id')!r} has no meta.options / meta.answer_category; "
                             "this breakdown needs MCUB-synth items (python -m training.mcub_synth).")
        meta[item["id"]] = m
    counts: dict[str, dict[str, int]] = {}
    for p in predictions:
        if p["id"] not in meta:
            raise ValueError(f"prediction for item {p['id']!r}, which is not in the items file; use the file the predictions came from.")
        m = meta[p["id"]]
        named = named_option(p["answer"], m["options"])
        c = counts.setdefault(p["variant"], {"items": 0, "letter": 0, "named": 0, "agree": 0})
        c["items"] += 1
        c["letter"] += bool(p["correct"])
        c["named"] += named == m["answer_category"]
        c["agree"] += named is not None and p["predicted"] == LETTERS[m["options"].index(named)]
    return {v: {"items": c["items"], **{k: round(c[k] / c["items"], 4) for k in ("letter", "named", "agree")}}
            for v, c in counts.items()}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.diagnose", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    answers = sub.add_parser("answers", help="letter vs named option per variant, from an mcub predictions file")
    answers.add_argument("--data", required=True, nargs="+", help="the MCUB-synth items JSON (synth-3: its four subset files)")
    answers.add_argument("--predictions", required=True, help="its predictions .jsonl (written by python -m composition mcub)")
    answers.add_argument("--json", action="store_true")
    lookup = sub.add_parser("lookup", help="the option-letter lookup alone, text only, base and variants")
    lookup.add_argument("--variants", nargs="+", default=["NaiveMC", "DAMC"], metavar="NAMES")
    lookup.add_argument("--n", type=int, default=48, help="questions (default 48)")
    lookup.add_argument("--experts", nargs="+", default=None, metavar="DIR", help="expert folders (default: the bundled experts)")
    lookup.add_argument("--seed", type=int, default=0)
    lookup.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    try:
        if args.command == "answers":
            items = [item for path in args.data for item in json.loads(Path(path).read_text(encoding="utf-8"))]
            result = answer_breakdown(items, _read_jsonl(Path(args.predictions)))
        else:
            result = _lookup(args)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=1))
    elif args.command == "answers":
        print(f"{'variant':<22} {'items':>5} {'letter':>7} {'named':>7} {'agree':>7}")
        for variant, r in result.items():
            print(f"{variant:<22} {r['items']:>5} {r['letter']:>7.3f} {r['named']:>7.3f} {r['agree']:>7.3f}")
    else:
        for variant, fraction in result.items():
            print(f"{variant:<22} {fraction:.3f}")
    return 0


def _lookup(args) -> dict[str, float]:
    from composition.base_llm import load_base_llm
    from composition.catalog import scan_experts
    from composition.composer import ComposedModel

    from .lookup import letter_lookup_accuracy

    cm = ComposedModel(load_base_llm())
    for entry in scan_experts(args.experts):
        cm.load_expert(entry.folder)
    return letter_lookup_accuracy(cm, args.variants, n=args.n, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
