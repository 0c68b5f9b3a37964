"""Untrained (random, small) experts on a real base, saved to folders: plumbing, not quality.

Used by the app, CLI and MCUB tests (see the ``random_experts_dir`` fixture in conftest.py).
"""
from __future__ import annotations

from pathlib import Path

import torch

from composition.expert import EncoderRef, Expert, ExpertConfig, ProjectorSpec, save_expert
from tests.tiny import random_delta

# modality -> (encoder kind, feature dim): the offline encoders of DESIGN.md §4.
ENCODERS = {
    "image": ("efficientnet-lite0", 1280),
    "audio": ("whisper-tiny.en", 384),
    "video": ("efficientnet-lite0-video", 1280),
    "point": ("point-fps-knn", 256),
}


def target_shapes(base, targets) -> dict[str, tuple[int, int]]:
    """(out, in) of every linear layer named in ``targets``, also when a composed model has
    wrapped them (RoutedLinear keeps the frozen layer as ``.base``)."""
    shapes = {}
    for name, module in base.model.named_modules():
        layer = getattr(module, "base", module)
        if isinstance(layer, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            shapes[name] = (layer.out_features, layer.in_features)
    if not shapes:
        raise ValueError(f"the base has no linear layers named {targets}; random experts need them.")
    return shapes


def save_random_experts(base, folder: Path, modalities=("image", "audio"), training: str = "decoupled",
                        seed: int = 0) -> Path:
    """One random expert per modality (LoRA r=4 on q_proj and v_proj) under ``folder/<modality>``."""
    shapes = target_shapes(base, ("q_proj", "v_proj"))
    g = torch.Generator().manual_seed(seed)
    names = ("shared",) if training == "shared" else ("text", "modality")
    for modality in modalities:
        kind, dim = ENCODERS[modality]
        config = ExpertConfig(name=modality, modality=modality, training=training, base_model_name=base.name,
                              base_model_sha256=base.sha256, encoder=EncoderRef(kind, None, dim),
                              projector=ProjectorSpec("linear", dim, base.hidden_size))
        projector = config.projector.build()
        with torch.no_grad():
            projector[0].weight.mul_(0.05)
        deltas = {n: random_delta(shapes, 4, g, std=0.02) for n in names}
        hidden = base.hidden_size
        save_expert(Expert(config, deltas, projector, torch.zeros(0, hidden), torch.zeros(0, hidden)), folder / modality)
    return folder
