"""``python -m composition experts``: list expert folders."""
from __future__ import annotations

import argparse
import json

from .registry import command


# --- experts ------------------------------------------------------------------------
@command("experts", "list experts (default: the bundled ones)")
def build_experts(p: argparse.ArgumentParser):
    p.add_argument("--experts", nargs="+", metavar="DIR")
    p.add_argument("--json", action="store_true")
    return run_experts


def run_experts(args: argparse.Namespace) -> int:
    from ..discovery import scan_experts

    entries = scan_experts(args.experts)
    rows = [{"name": e.config.name, "modality": e.config.modality, "training": e.config.training,
             "base": e.config.base_model_name, "encoder": e.config.encoder.kind, "folder": e.folder.name} for e in entries]
    if args.json:
        print(json.dumps({"experts": rows}, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<20} {r['modality']:<6} {r['training']:<10} base={r['base']} encoder={r['encoder']}")
    return 0


