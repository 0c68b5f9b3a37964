"""``python -m composition interference``: why decoupling helps, as a curve with paired statistics.

    python -m composition interference --data synth-4 --seed 6173 --json > run.json
    python -m composition interference --data MCUB-4.json --answers MCUB-answer.json --scales 1,2,4 --resume

At each scale s every expert's λ is s·(1/K): the shared composition (NaiveMC over the
``-shared`` experts) and DAMC (over the decoupled experts) answer the same items in one batch,
with the route check (the shared composition with λ on its text tokens only) beside them.
Prints accuracy with a 95 % bootstrap interval per point, the items only DAMC / only the
shared merge got right and the exact McNemar p-value per scale; writes a PNG plot and one
predictions file per scale (``--resume`` continues from them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import add_study_args
from .registry import command


@command("interference", "the shared composition and DAMC at λ = s·(1/K) on the same items: accuracy with intervals, "
                         "paired McNemar tests and a plot (why decoupling helps)")
def build_interference(p: argparse.ArgumentParser):
    add_study_args(p, "FILE|synth-4|synth-3", "a question JSON (MCUB layout) or an MCUB-synth set built by python -m "
                   "training.mcub_synth (default synth-4)",
                   "expert folders with shared and decoupled experts (default: the bundled experts)", "per-scale")
    p.add_argument("--scales", default="1,1.5,2,3,4", metavar="S,S,..",
                   help="s in λ_i = s·(1/K) per expert (default 1,1.5,2,3,4; 1 is the paper's NaiveMC and DAMC)")
    p.add_argument("--no-route-check", dest="route_check", action="store_false",
                   help="leave out NaiveMC-text-lambda (the shared composition with λ on text tokens only)")
    p.add_argument("--modality-check-at", default=None, metavar="S,S,..",
                   help="also run NaiveMC-modality-lambda (λ on modality tokens only, text tokens at 1/K) at these "
                        "scales, in its own predictions file, so it can be added to a finished run with --resume")
    p.add_argument("--retention", action="store_true",
                   help="also ask the text-only retention set (no input; the base alone as reference) of both "
                        "compositions at every scale: what a larger λ costs the base's own skills")
    p.add_argument("--mu", dest="mus", nargs="+", default=[], metavar="MODALITY=V", help="DAMC's μ per modality (default 1)")
    p.add_argument("--plot", default=None, metavar="PNG", help="the plot (default <predictions dir>/<stem>-interference.png)")
    p.add_argument("--replot", nargs="+", default=None, metavar="JSON",
                   help="only draw the plot of stored runs (--json outputs), one column each, into --plot; runs nothing")
    p.add_argument("--copy-examples", default=None, metavar="DIR",
                   help="with --replot: copy the example items' input files of the stored runs into DIR (the app shows "
                        "them from assets/interference-examples where the MCUB-synth set is not built)")
    p.add_argument("--examples", type=int, default=3, metavar="N",
                   help="items per scale kept where the shared merge fails and DAMC does not (default 3)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (what docs/data/interference-*.json hold)")
    return run


def run(args: argparse.Namespace) -> int:
    from ..discovery import scan_experts
    from ..errors import CompositionError
    from ..evaluation import DEFAULT_CONFIG
    from ..evaluation.interference import (RETENTION_NOTE, RunFiles, check_scales, plot_png, run_interference, scale_parts,
                                           table_lines)
    from ..evaluation.tune import parse_grid
    from ..variants import Coefficients
    from .common import build_model, items_line, parse_assignments, study_items, study_settings

    if args.copy_examples and not args.replot:
        raise CompositionError("--copy-examples copies the examples of stored runs: give it with --replot JSON ...")
    if args.replot:
        return _replot(args)
    if args.examples < 0:
        raise CompositionError(f"--examples {args.examples}; expected 0 or more.")
    scales = check_scales(parse_grid(args.scales, "--scales"))
    checks_at = [] if args.modality_check_at is None else check_scales(parse_grid(args.modality_check_at,
                                                                                  "--modality-check-at"))
    if not set(checks_at) <= set(scales) - {1.0}:
        raise CompositionError(f"--modality-check-at {args.modality_check_at} names a scale that --scales {args.scales} "
                               "does not run, or 1 (where the check is NaiveMC itself); give other scales of --scales.")
    mus = {k: float(v) for k, v in parse_assignments(args.mus, "--mu").items()}
    Coefficients(mus=mus)  # modality names and ranges, before anything loads
    # Items, answers and the scoring rule first (cheap), then the experts, then the model.
    study = study_items(args)
    items, rule, stem, data = study.items, study.rule, study.stem, study.data
    entries = scan_experts(args.experts)
    trainings = {e.config.training for e in entries}
    if trainings != {"shared", "decoupled"}:
        raise CompositionError(f"the curve compares the shared composition with DAMC, so it needs shared and decoupled "
                               f"experts; the folders given hold only {', '.join(sorted(trainings)) or 'none'}. "
                               "Pass both kinds to --experts (the bundled set has both).")
    cm = build_model(args, entries)
    folder, settings = study_settings(args, cm, entries, study, [], Coefficients(mus=mus))
    run_files = RunFiles(folder, stem, settings, resume=args.resume)

    def progress(done: int, total: int, label: str) -> None:
        print(f"\r[{done}/{total}] {label}", end="", file=sys.stderr, flush=True)

    result = run_interference(cm, items, scales=scales, route_check=args.route_check,
                              modality_checks_at=checks_at, mus=mus, config=DEFAULT_CONFIG,
                              rule=rule, batch_items=args.batch_items, files=run_files, progress=progress,
                              resamples=args.resamples, n_examples=args.examples, data=data, retention=args.retention)
    print(file=sys.stderr)
    out = result.to_json()
    out["settings"] = {k: v for k, v in out["settings"].items() if k != "items"}  # the ids are in item_ids
    out["predictions"] = [str(run_files.path(s, part)) for s in scales
                          for part in scale_parts(s, args.route_check, checks_at)]
    plot = Path(args.plot) if args.plot else folder / f"{stem}-interference.png"
    plot_png([out], plot)
    print(f"predictions: {', '.join(out['predictions'])}", file=sys.stderr)
    print(f"plot: {plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(out, indent=1, ensure_ascii=False))
        return 0
    print(f"{items_line(data, out['items'])}, {result.seconds:.0f} s; λ_i = s·(1/K) for every expert of each composition")
    for line in table_lines(out):
        print(line)
    criterion = out["criterion"]
    if criterion:
        verdict = "holds" if criterion["holds"] else "does not hold"
        print(f"at s = {criterion['scale']:g}: DAMC − shared = {criterion['gap']:+.3f}, p = {criterion['p_value']:.3g} "
              f"({verdict}: gap ≥ {criterion['min_gap']:g} with p < {criterion['alpha']:g})")
    if out["retention"]:
        r = out["retention"]
        print(f"text-only retention: {r['items']} items, the base alone answers {100 * r['base_accuracy']:.0f} % right; "
              "the last column is the share of those each composition still answers right")
    else:
        print(RETENTION_NOTE)
    return 0


def _replot(args: argparse.Namespace) -> int:
    from ..errors import CompositionError
    from ..evaluation.interference import JSON_FORMAT, copy_examples, plot_png

    if not args.plot:
        raise CompositionError("--replot needs --plot PNG, the file to draw into.")
    runs = []
    for path in args.replot:
        try:
            run = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CompositionError(f"--replot {path}: not a readable JSON file ({exc}).") from None
        if not isinstance(run, dict) or run.get("format") != JSON_FORMAT:
            raise CompositionError(f"--replot {path}: not an interference run (format {JSON_FORMAT!r}); "
                                   "give files written by --json.")
        runs.append(run)
    print(plot_png(runs, args.plot))
    if args.copy_examples:
        written = copy_examples(runs, args.copy_examples, args.examples)
        print(f"{len(written)} example file(s) copied into {args.copy_examples}")
    return 0
