"""``python -m composition encoders`` and ``encode``: list the frozen encoders, and write the
features files give through the full pipeline (decoder -> encoder-side preprocessing -> encoder).

`encode` is how a researcher checks an encoder against its original: same file in, compare the
saved features with the original code's. The decoder is the project's (modalities/), with the
limits the encoder declares (`EncoderSpec.input_limits`, e.g. 8192 points for point-bert).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .registry import command
from ..errors import CompositionError


def _spec_rows() -> list[dict]:
    from modalities.encoders import list_encoder_specs

    return [{"name": s.kind, "modality": s.modality, "offline": s.offline, "weight_source": s.weight_source or None,
             "tokens": s.num_tokens, "feature_dim": s.feature_dim, "input_limits": dict(s.input_limits),
             "description": s.description} for s in list_encoder_specs()]


@command("encoders", "list the registered encoders: modality, weight source, tokens produced, feature width")
def build_encoders(p: argparse.ArgumentParser):
    p.add_argument("--json", action="store_true", help="print JSON: {\"encoders\": [{name, modality, offline, "
                   "weight_source, tokens, feature_dim, input_limits, description}, ...]}")
    return run_encoders


def run_encoders(args: argparse.Namespace) -> int:
    rows = _spec_rows()
    if args.json:
        print(json.dumps({"encoders": rows}, indent=2))
        return 0
    show = lambda v: "depends" if v is None else str(v)  # noqa: E731 - None: set by the weights given
    print(f"{'name':<26} {'modality':<8} {'tokens':>7} {'width':>7}  weights")
    for r in rows:
        where = r["weight_source"] or ("offline" if r["offline"] else "hub")
        print(f"{r['name']:<26} {r['modality']:<8} {show(r['tokens']):>7} {show(r['feature_dim']):>7}  {where}")
    return 0


@command("encode", "write the features of files through decoder + preprocessing + encoder (safetensors)")
def build_encode(p: argparse.ArgumentParser):
    p.add_argument("--encoder", required=True, metavar="NAME", help="an encoder kind (see: python -m composition encoders)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="the encoder's weights: a file or folder (default: the kind's bundled weights, if any)")
    p.add_argument("files", nargs="+", metavar="FILE", help="input files of the encoder's modality")
    p.add_argument("--out", required=True, metavar="FEATURES.safetensors",
                   help="output: one tensor 'features.<i>' (tokens, width) per file, in order; metadata names the files")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the encoder runs (default cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="compute dtype (default: float32 on cpu, bfloat16 on cuda); features are saved as float32")
    return run_encode


def run_encode(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from modalities import get_modality
    from modalities.encoders import encoder_spec, get_encoder

    spec = encoder_spec(args.encoder)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CompositionError(f"--out {out.name!r} must end in .safetensors, e.g. --out features.safetensors.")
    if not out.parent.is_dir():
        raise CompositionError(f"--out folder {str(out.parent)!r} does not exist; create it first.")
    modality = get_modality(spec.modality)
    if spec.input_limits:
        modality = modality.with_limits(**spec.input_limits)
    started = time.perf_counter()
    loaded = [modality.load(f) for f in args.files]  # every file checked before the (slow) encoder loads
    dtype = getattr(torch, args.dtype) if args.dtype else None
    encoder = get_encoder(args.encoder, args.weights, device=args.device, dtype=dtype)
    tensors, files = {}, []
    for i, item in enumerate(loaded):
        feats = encoder.encode(item.data).to("cpu").contiguous()
        tensors[f"features.{i}"] = feats
        files.append({"file": item.source_name, "shape": list(feats.shape), "notes": list(item.notes)})
        print(f"{item.source_name}: {tuple(feats.shape)}", file=sys.stderr)
    metadata = {"encoder": args.encoder, "weights": str(args.weights) if args.weights else "",
                "dtype": str(encoder.dtype).removeprefix("torch."), "files": json.dumps(files)}
    save_file(tensors, str(out), metadata=metadata)
    print(f"wrote {len(tensors)} feature tensors of {encoder.num_tokens} x {encoder.feature_dim} to {out} "
          f"in {time.perf_counter() - started:.1f} s")
    return 0
