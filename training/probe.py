"""Is the encoder the bottleneck? A linear probe on frozen encoder features.

    python -m training.probe --modality image [--scenes 800]

Trains a multi-label logistic regression (mean-pooled features -> which categories and
which colours are in the scene) on the cached training scenes and reports, on the
held-out scenes the build scores experts on, the fraction of scenes whose exact set of
categories (colours) it finds. When the probe is near 100 % but an expert is not, the
information is in the features and the expert's training (steps, answer format) is what
to fix. Point clouds have no packaged encoder (training.point_pretrain trains theirs as a
classifier and reports the same exact-set score), so the probe covers image, audio and video.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import prepare_modality, scene_labels
from .world import CATEGORIES

REPO = Path(__file__).resolve().parent.parent
FROZEN = ("image", "audio", "video")


def pooled(inputs: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([x.float().mean(0) for x in inputs])


def probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
          steps: int = 300, seed: int = 0) -> dict[str, float]:
    """Exact-set and per-label accuracy of a standardized linear probe."""
    torch.manual_seed(seed)
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-5
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    w = torch.zeros(a.shape[1], train_y.shape[1], requires_grad=True)
    bias = torch.zeros(train_y.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w, bias], lr=1e-2)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(a @ w + bias, train_y) + 1e-3 * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        hits = ((b @ w + bias) > 0) == test_y.bool()
    return {"exact_set": round(hits.all(1).float().mean().item(), 3), "per_label": round(hits.float().mean().item(), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--modality", required=True, choices=FROZEN)
    parser.add_argument("--scenes", type=int, default=800, help="training scenes (the build's cache is reused)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=str(REPO / ".cache" / "training"))
    args = parser.parse_args(argv)
    quiet = lambda message: None  # noqa: E731
    train = prepare_modality(args.modality, args.scenes, args.seed, Path(args.cache), log=quiet)
    heldout = prepare_modality(args.modality, 42, args.seed + 1000, Path(args.cache), log=quiet)
    train_y, heldout_y, n = scene_labels(train), scene_labels(heldout), len(CATEGORIES)  # categories, then colours
    result = {field: probe(pooled(train.inputs), train_y[:, cols], pooled(heldout.inputs), heldout_y[:, cols])
              for field, cols in (("category", slice(None, n)), ("colour", slice(n, None)))}
    print(json.dumps({"modality": args.modality, "train_scenes": len(train), "heldout_scenes": len(heldout), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
