"""``python -m composition import modelcompose SRC... --out DIR``: the paper's released experts -> expert folders."""
from __future__ import annotations

import argparse

from .registry import command


@command("import", "import foreign expert checkpoints (the paper's ModelCompose release) as expert folders")
def build_import(p: argparse.ArgumentParser):
    p.add_argument("format", choices=["modelcompose"], help="the checkpoint format")
    p.add_argument("sources", nargs="+", metavar="SRC",
                   help="a checkpoint folder (config.json + adapter_model.bin), or owner/name:subfolder on the hub")
    p.add_argument("--out", required=True, help="folder that receives one expert folder per source")
    return run_import


def run_import(args) -> int:
    from ..importers import import_modelcompose

    for folder in import_modelcompose(args.sources, args.out):
        print(folder)
    return 0
