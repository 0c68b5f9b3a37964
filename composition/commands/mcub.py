"""``python -m composition mcub``: score compositions and experts on MCUB files."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli import add_composition_args, build_model, check_coefficient_names, coefficients_from_args, command, variant_specs


# --- mcub ---------------------------------------------------------------------------
@command("mcub", "score compositions and experts on MCUB (an MCUB JSON file, or the MCUB-synth sets)")
def build_mcub(p: argparse.ArgumentParser):
    p.add_argument("--data", required=True, metavar="FILE|synth-3|synth-4",
                   help="an MCUB JSON file (paths relative to it), or synth-4 / synth-3 (built once into .cache/mcub-synth)")
    p.add_argument("--seed", type=int, default=0, help="MCUB-synth seed (default 0)")
    p.add_argument("--synth-items", type=int, default=200, help="items per MCUB-synth set (default 200)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N items (of each subset for synth-3)")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAMES",
                   help="NaiveMC, DAMC, expert:<name>, or a merge method; default: NaiveMC, DAMC and every expert")
    p.add_argument("--batch-items", type=int, default=8, help="items per batch; each batch runs items x variants rows (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=4, help="answer length; only the first letter is scored (default 4)")
    add_composition_args(p)
    p.add_argument("--json", action="store_true",
                   help="print JSON: {\"items\", \"accuracy\": {variant: fraction}, \"subsets\"?: {name: {items, accuracy}}}")
    return run_mcub


def run_mcub(args: argparse.Namespace) -> int:
    from ..catalog import scan_experts
    from ..errors import CompositionError
    from ..generate import GenerationConfig
    from ..mcub import SYNTH_KINDS, evaluate, load_mcub, synth_sets

    for flag, value in (("--limit", args.limit), ("--batch-items", args.batch_items), ("--synth-items", args.synth_items)):
        if value is not None and value < 1:
            raise CompositionError(f"{flag} {value}; expected a positive integer.")
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    coefficients = coefficients_from_args(args)
    specs = variant_specs(args.variants, args.method_params) if args.variants else None
    # A user's file is checked first (cheap); MCUB-synth sets may take a minute to build, so after the experts.
    loaded = {} if args.data in SYNTH_KINDS else {Path(args.data): load_mcub(args.data)}
    entries = scan_experts(args.experts)
    check_coefficient_names(coefficients, entries)
    if args.data in SYNTH_KINDS:
        built = synth_sets(args.data, args.seed, args.synth_items, on_build=lambda m: print(m, file=sys.stderr))
        loaded = {path: load_mcub(path) for path in built.values()}
    items = [item for path_items in loaded.values() for item in path_items[: args.limit]]
    cm = build_model(args, entries)
    with _progress_bar(len(items)) as bar:
        result = evaluate(cm, items, specs, coefficients, config, batch_items=args.batch_items,
                          progress=lambda done, total: bar.update(done - bar.n))
    first = next(iter(loaded))
    stem = f"mcub-{args.data.replace('-', '')}" if args.data in SYNTH_KINDS else first.stem
    where = _write_mcub_predictions(result, first.parent, f"{stem}-predictions.jsonl")
    print(f"predictions: {where}", file=sys.stderr)
    summary = result.to_json()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_mcub_table(result, summary)
    return 0


def _progress_bar(total: int):
    """A tqdm bar on stderr (shown on a terminal only, so pipes and --json stay clean)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="item", file=sys.stderr, disable=None, leave=False)


def _write_mcub_predictions(result, folder: Path, name: str) -> Path:
    """JSON lines next to the data JSON; the current folder when that one is read-only."""
    try:
        return result.write_predictions(folder / name)
    except OSError:
        return result.write_predictions(Path.cwd() / name)


def _print_mcub_table(result, summary: dict) -> None:
    print(f"{summary['items']} items, {result.seconds:.1f} s ({result.items_per_second:.2f} items/s)")
    groups = {"all": summary["accuracy"]}
    groups.update({name: s["accuracy"] for name, s in summary.get("subsets", {}).items()})
    for group, acc in groups.items():
        print(f"== {group}")
        for variant, fraction in acc.items():
            print(f"  {variant:<28} {100 * fraction:6.1f} %")
