"""Magnitude pruning, then the weighted sum (peft ``add_weighted_adapter(combination_type="magnitude_prune")``).

huggingface/peft ``src/peft/utils/merge_utils.py``: ``magnitude_prune`` keeps the
``k = int(density·numel)`` largest-magnitude entries of each task tensor
(``magnitude_based_pruning``), then sums them with the weights. peft's ``topk`` breaks
magnitude ties arbitrarily; we keep the lowest indices (deterministic on every device).
"""
from __future__ import annotations

import torch

from ._common import keep_largest, weighted_sum
from .registry import HyperParam, register_method


@register_method(
    "magnitude_prune",
    label="Magnitude prune",
    help=(
        "Keeps each expert's int(density·numel) largest-magnitude entries, then the weighted sum "
        "(peft's magnitude_prune). In core space (@core) the entries are the core's: a different "
        "operation from full-space pruning."
    ),
    group="sparsifier",
    formula="Σ λ_i·top_k(|δ_i|) ⊙ δ_i,  k = int(density·numel)",
    params=(
        HyperParam("density", default=0.5, minimum=0.0, maximum=1.0, step=0.05,
                   help="Fraction of each expert's delta kept (largest magnitudes); 1 keeps everything."),
    ),
)
def magnitude_prune(deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator, density: float) -> torch.Tensor:
    """``Σ_i λ_i·prune(δ_i)``.

    Args:
        deltas: ``(K, *shape)`` stack.
        weights: ``(K,)`` λ_i.
        generator: unused (deterministic).
        density: fraction kept per delta.
    Returns:
        The merged delta.
    """
    return weighted_sum(keep_largest(deltas, int(density * deltas[0].numel())), weights)
