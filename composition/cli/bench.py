"""``python -m composition bench``: performance figures beside same-run baselines."""
from __future__ import annotations

import argparse
import sys

from .registry import command


# --- bench --------------------------------------------------------------------------
@command("bench", "performance figures, each beside its baseline measured in the same run")
def build_bench(p: argparse.ArgumentParser):
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="where models run (default: cuda when available); "
                   "the 7B-shaped GPU sections need cuda")
    p.add_argument("--quick", action="store_true", help="a fast smoke run on tiny random models (checks, not figures)")
    p.add_argument("--only", nargs="+", default=[], metavar="SECTION",
                   help="run only these sections (side_by_side_one_input, side_by_side_all_inputs, recompose_online, "
                        "recompose_materialized, mcub, prefill_passes, chat, methods, gpu); --only gpu needs only torch and "
                        "transformers (with --device cpu --quick: a rehearsal of its code path)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per variant (default 32; 4 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure, the median is reported (default 3; 1 with --quick)")
    p.add_argument("--mcub-items", type=int, default=4, help="MCUB items to evaluate (default 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object with all figures (progress lines go to stderr)")
    return run_bench


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from ..benchmarks.speed import BenchConfig, run_benchmark, to_json
    from ..errors import CompositionError

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


