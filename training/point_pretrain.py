"""Point encoder pre-training: the first step of stage 1 for point clouds.

Nothing pretrained exists offline for point clouds, so the point encoder is trained from
its seeded initialisation as a multi-label classifier of what the synthetic world puts in
a scene (its categories and colours): a linear head on every group token, max-pooled over
the tokens (logsumexp), so a label is present when some part of the cloud shows it. The
head is thrown away afterwards; the encoder is frozen and the training clouds are encoded
once (from the groups already computed), so stages 0-2 of the point experts run on cached features like the other modalities.

Why before the LLM stages, and not through them: classifying costs no LLM pass (about
0.26 s per batch of 32 clouds on one CPU thread), so the encoder gets hundreds of steps
where the LLM stages afford tens; when it was trained only through the LLM, the point
experts stayed at chance on categories. The farthest-point sampling and neighbour search
have no weights, so they run once per cloud here, not once per step.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from modalities.encoders import PointEncoderNet, build_point_encoder

from .data import ModalityData, scene_labels
from .world import CATEGORIES


def _groups(encoder: PointEncoderNet, data: ModalityData) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        pairs = [encoder.group(cloud.float()[None]) for cloud in data.inputs]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def encode_clouds(encoder: PointEncoderNet, data: ModalityData,
                  groups: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Every cloud's features through the frozen ``encoder``, one cloud at a time, exactly as it
    runs at inference (``groups``: the clouds' groups when already computed)."""
    local, centres = groups if groups is not None else _groups(encoder, data)
    with torch.no_grad():
        return [encoder.embed(local[i:i + 1], centres[i:i + 1])[0] for i in range(len(data))]


def exact_set_accuracy(logits: torch.Tensor, labels: torch.Tensor, n_categories: int = len(CATEGORIES)) -> dict[str, float]:
    """Fraction of scenes whose exact category set (and colour set) the classifier finds."""
    hits = (logits > 0) == labels.bool()
    return {"category": round(hits[:, :n_categories].all(1).float().mean().item(), 3),
            "colour": round(hits[:, n_categories:].all(1).float().mean().item(), 3) if labels.shape[1] > n_categories else None}


def pretrain_point_encoder(data: ModalityData, steps: int, seed: int, batch_size: int = 32, lr: float = 1e-3,
                           warmup: int = 50, heldout: ModalityData | None = None,
                           log=print) -> tuple[PointEncoderNet, list[torch.Tensor], list[dict]]:
    """Train a fresh encoder (seeded) on ``data``'s clouds. Returns it frozen in eval mode, every
    training cloud's features through it ((num_groups, feature_dim) each, what the registry's
    encoder gives for the same cloud), and a log (losses; the held-out exact-set accuracy when
    ``heldout`` is given)."""
    if data.modality != "point":
        raise ValueError(f"point encoder pre-training needs point-cloud data, got {data.modality!r} data")
    encoder = build_point_encoder(seed=seed)
    labels = scene_labels(data)
    head = nn.Linear(encoder.config.feature_dim, labels.shape[1])
    with torch.no_grad():  # seeded head, like the encoder
        g = torch.Generator().manual_seed(seed + 1)
        bound = 1.0 / math.sqrt(head.in_features)
        head.weight.copy_(torch.rand(head.weight.shape, generator=g) * 2 * bound - bound)
        head.bias.zero_()
    local, centres = _groups(encoder, data)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed + 2)
    classify = lambda loc, cen: torch.logsumexp(head(encoder.embed(loc, cen)), dim=1)  # noqa: E731
    rows, start, running = [], time.perf_counter(), None
    for step in range(steps):
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        idx = torch.randint(0, len(data), (batch_size,), generator=g)
        loss = F.binary_cross_entropy_with_logits(classify(local[idx], centres[idx]), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if step == 0 or (step + 1) % 100 == 0 or step == steps - 1:
            rows.append({"pretrain_step": step + 1, "loss": round(running, 4), "seconds": round(time.perf_counter() - start, 1)})
            log(f"  point encoder pre-training step {step + 1}/{steps} loss {running:.3f}")
    encoder.requires_grad_(False).eval()
    features = encode_clouds(encoder, data, (local, centres))
    if heldout is not None and len(heldout):
        with torch.no_grad():
            accuracy = exact_set_accuracy(classify(*_groups(encoder, heldout)), scene_labels(heldout))
        rows.append({"pretrain_heldout_exact_set": accuracy})
        log(f"  point encoder pre-training: held-out exact set {accuracy}")
    return encoder, features, rows
