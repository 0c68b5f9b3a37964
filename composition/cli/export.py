"""``python -m composition export``: a composition as a plain transformers checkpoint plus its modality parts."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import add_composition_args, build_model, composition_config
from .registry import command


# --- export -------------------------------------------------------------------------
@command("export", "write a composition as a plain transformers checkpoint plus its modality parts")
def build_export(p: argparse.ArgumentParser):
    p.add_argument("--variant", default="DAMC", help="the variant to export (default DAMC)")
    p.add_argument("--out", required=True, help="an empty or new folder")
    p.add_argument("--modalities", nargs="+", default=None, help="which modalities the composition covers (default: all loaded experts')")
    add_composition_args(p)
    return run_export


def run_export(args: argparse.Namespace) -> int:
    from ..discovery import scan_experts
    from ..errors import CompositionError
    from ..export import export_composition

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CompositionError(f"--out {out.name!r} exists and is not an empty folder; choose a new folder.")
    entries = scan_experts(args.experts)
    args.variants = [args.variant]
    config = composition_config(args, entries)
    (spec,) = config.variant_specs()
    cm = build_model(args, entries)
    start = time.perf_counter()
    export_composition(cm, spec, out, coefficients=config.coefficients(),
                       modalities=set(args.modalities) if args.modalities else None)
    print(f"exported {spec.name} to {out} in {time.perf_counter() - start:.1f} s")
    return 0


