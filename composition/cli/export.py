"""``python -m composition export``: a composition as a folder the Hub understands.

    python -m composition export --variant DAMC --out my-composition                      # a plain checkpoint
    python -m composition export --variant DAMC --form adapter --out my-adapter [--rank R]  # a peft adapter
    python -m composition export ... --push me/my-composition [--private]                  # and upload it

Either form carries its modality parts (``experts/<modality>/``), ``composition.json`` and a
model card (``README.md``) with the recipe and the coefficients applied.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .common import add_composition_args, build_model, composition_config
from .registry import command


@command("export", "write a composition as a plain checkpoint or a peft adapter, with its modality parts and a model card")
def build_export(p: argparse.ArgumentParser):
    p.add_argument("--variant", default="DAMC", help="the variant to export (default DAMC)")
    p.add_argument("--out", required=True, help="an empty or new folder")
    p.add_argument("--form", choices=("full", "adapter"), default="full",
                   help="full: a plain transformers checkpoint (the text merge in the weights); adapter: a peft LoRA "
                        "adapter on the base holding the merged text delta (default full)")
    p.add_argument("--rank", type=int, default=None,
                   help="the adapter's rank (default: exact, the merged delta's own rank); a layer needing more is "
                        "truncated by SVD, and the card reports the energy each kept")
    p.add_argument("--modalities", nargs="+", default=None, help="which modalities the composition covers (default: all loaded experts')")
    p.add_argument("--mcub-json", default=None, metavar="FILE",
                   help="the JSON of `python -m composition mcub --json` for this composition: its accuracy goes on the card")
    p.add_argument("--push", default=None, metavar="OWNER/NAME", help="upload the folder to this Hub repository (your token)")
    p.add_argument("--private", action="store_true", help="with --push: a private repository")
    add_composition_args(p)
    return run_export


def run_export(args: argparse.Namespace) -> int:
    from ..discovery import scan_experts
    from ..errors import CompositionError
    from ..export import export_composition
    from ..publish import push_folder

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CompositionError(f"--out {out.name!r} exists and is not an empty folder; choose a new folder.")
    if args.rank is not None and args.form != "adapter":
        raise CompositionError("--rank applies to --form adapter; drop it, or add --form adapter.")
    entries = scan_experts(args.experts)
    args.variants = [args.variant]
    config = composition_config(args, entries)
    (spec,) = config.variant_specs()
    mcub = mcub_result(args.mcub_json, spec.name) if args.mcub_json else None
    cm = build_model(args, entries)
    start = time.perf_counter()
    export_composition(cm, spec, out, coefficients=config.coefficients(),
                       modalities=set(args.modalities) if args.modalities else None, form=args.form, rank=args.rank,
                       recipe_yaml=config.to_yaml(cm.experts, base_name=cm.base.name), mcub=mcub)
    print(f"exported {spec.name} ({args.form}) to {out} in {time.perf_counter() - start:.1f} s")
    if args.push:
        try:
            print(f"pushed to {push_folder(out, args.push, private=args.private)}")
        except CompositionError as exc:
            print(f"note: {exc}", file=sys.stderr)  # the export itself succeeded; the folder is there
    return 0


def mcub_result(path: str, variant: str) -> dict:
    """The accuracy of ``variant`` in the JSON of ``mcub --json`` (``{"items", "accuracy": {variant: share}}``)."""
    from ..errors import CompositionError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        accuracy = float(data["accuracy"][variant])
    except (OSError, ValueError, KeyError, TypeError):
        raise CompositionError(f"--mcub-json {Path(path).name!r} holds no accuracy for {variant!r}; give the JSON that "
                               f"`python -m composition mcub --json` printed for this variant.") from None
    data_name = (data.get("task") or {}).get("family") or "MCUB"
    return {"data": data_name, "items": data.get("items"), "accuracy": accuracy}
