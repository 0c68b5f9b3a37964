"""``python -m composition schedules``: DAMC with a scalar λ against λ schedules over the layers, paired.

    python -m composition schedules --seed 0 --json > docs/data/schedules-synth4-seed0.json
    python -m composition schedules --data synth-4 --seed 0 --limit 40 --only scalar,rising

Every expert gets the same schedule at a = 1/K (scalar a; rising [0, 2a]; falling [2a, 0];
attention-only: a on self_attn, 0 on the MLP), DAMC answers the same items under each, and
each schedule is compared with the scalar λ item by item (right-alone counts, exact McNemar
p, the paired bootstrap interval of the gap). One predictions file per schedule; ``--resume``
continues a stopped run.
"""
from __future__ import annotations

import argparse
import json
import sys

from .registry import command


@command("schedules", "DAMC with the paper's scalar λ against λ schedules over the layers (rising, falling, "
                      "attention-only) on the same MCUB items, with paired statistics")
def build_schedules(p: argparse.ArgumentParser):
    p.add_argument("--data", default="synth-4", metavar="FILE|synth-4",
                   help="a question JSON of one modality set (MCUB layout) or MCUB-synth-4 (default)")
    p.add_argument("--answers", default=None, metavar="FILE", help="the gold answers file of --data, joined on id")
    p.add_argument("--data-root", default=None, metavar="DIR", help="folder the file's relative paths resolve against")
    p.add_argument("--seed", type=int, default=0, help="MCUB-synth seed (default 0)")
    p.add_argument("--synth-items", type=int, default=200, help="items of the MCUB-synth set (default 200)")
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("--scale", type=float, default=1.0, metavar="S",
                   help="a = S/K: every schedule's level (default 1, the paper's λ = 1/K; 2 is where the interference "
                        "curve separates the compositions)")
    p.add_argument("--only", default=None, metavar="NAME,NAME",
                   help="the schedules to run (default all: scalar, rising, falling, attention-only; scalar always runs)")
    p.add_argument("--experts", nargs="+", metavar="DIR", help="expert folders (default: the bundled experts)")
    p.add_argument("--base", default=None, help="base LLM (default: the offline SmolLM2-135M-Instruct)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="where the model runs")
    p.add_argument("--batch-items", type=int, default=8, help="items per batch (default 8)")
    p.add_argument("--predictions-dir", default=None, metavar="DIR",
                   help="where the per-schedule predictions files go (default: next to the data)")
    p.add_argument("--resume", action="store_true", help="continue a stopped run from its predictions files")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (what docs/data/schedules-*.json hold)")
    return run


def run(args: argparse.Namespace) -> int:
    from ..discovery import scan_experts
    from ..errors import CompositionError
    from ..evaluation import DEFAULT_CONFIG, SYNTH_KINDS
    from ..evaluation.schedule_study import SCALAR, SCHEDULES, StudyFiles, run_schedule_study, table_lines
    from ..variants import Coefficients
    from .common import build_model, items_line, study_items, study_settings

    for flag, value in (("--limit", args.limit), ("--batch-items", args.batch_items), ("--synth-items", args.synth_items)):
        if value is not None and value < 1:
            raise CompositionError(f"{flag} {value}; expected a positive integer.")
    names = list(SCHEDULES)
    if args.only:
        asked = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in asked if n not in SCHEDULES]
        if unknown:
            raise CompositionError(f"--only {unknown[0]!r} is not a schedule of the study; choose from {', '.join(SCHEDULES)}.")
        names = [SCALAR] + [n for n in SCHEDULES if n in asked and n != SCALAR]
    if args.data in SYNTH_KINDS and args.data != "synth-4":
        raise CompositionError("the study needs one modality set (K the same for every item): use --data synth-4.")
    study = study_items(args, "" if args.scale == 1 else f"-s{args.scale:g}")
    items, rule, stem, data = study.items, study.rule, study.stem, study.data
    entries = scan_experts(args.experts)
    cm = build_model(args, entries)
    folder, settings = study_settings(args, cm, entries, study, ["DAMC"], Coefficients())

    def progress(done: int, total: int, label: str) -> None:
        print(f"\r[{done}/{total}] {label}      ", end="", file=sys.stderr, flush=True)

    out = run_schedule_study(cm, items, names=names, config=DEFAULT_CONFIG, rule=rule, batch_items=args.batch_items,
                             files=StudyFiles(folder, stem, settings, resume=args.resume), progress=progress,
                             resamples=args.resamples, data=data, scale=args.scale)
    print(file=sys.stderr)
    if args.json:
        print(json.dumps(out, indent=1, ensure_ascii=False))
        return 0
    print(f"{items_line(data, out['items'])}, DAMC, a = {args.scale:g}/K, {out['seconds']:.0f} s")
    for line in table_lines(out):
        print(line)
    return 0
