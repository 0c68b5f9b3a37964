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

from .common import add_study_args
from .registry import command


@command("schedules", "DAMC with the paper's scalar λ against λ schedules over the layers (rising, falling, "
                      "attention-only) on the same MCUB items, with paired statistics")
def build_schedules(p: argparse.ArgumentParser):
    add_study_args(p, "FILE|synth-4", "a question JSON of one modality set (MCUB layout) or MCUB-synth-4 (default)",
                   "expert folders (default: the bundled experts)", "per-schedule")
    p.add_argument("--scale", type=float, default=1.0, metavar="S",
                   help="a = S/K: every schedule's level (default 1, the paper's λ = 1/K; 2 is where the interference "
                        "curve separates the compositions)")
    p.add_argument("--only", default=None, metavar="NAME,NAME",
                   help="the schedules to run (default all: scalar, rising, falling, attention-only; scalar always runs)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (what docs/data/schedules-*.json hold)")
    return run


def run(args: argparse.Namespace) -> int:
    from ..discovery import scan_experts
    from ..errors import CompositionError
    from ..evaluation import DEFAULT_CONFIG, SYNTH_KINDS
    from ..evaluation.schedule_study import SCALAR, SCHEDULES, StudyFiles, run_schedule_study, table_lines
    from ..variants import Coefficients
    from .common import build_model, items_line, study_items, study_settings

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
