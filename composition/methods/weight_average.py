"""Weight averaging: the mean of the deltas with normalized weights (a model soup of the experts)."""
from __future__ import annotations

import torch

from .registry import MethodError, register_method


@register_method(
    "weight_average",
    label="Weight average",
    help=(
        "Weighted mean Σ λ_i·ΔW_i / Σ λ_i (Wortsman et al. 2022, 'Model soups'; the MLLMerging "
        "benchmark's Weight Average). Linear: routed online, exact in every space; with λ_i = 1/K "
        "it equals task arithmetic."
    ),
    linear=True,
    normalized=True,
    group="task_vector",
    formula="Σ λ_i·ΔW_i / Σ λ_i",
)
def weight_average(deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """``Σ_i w_i·δ_i / Σ_i w_i``.

    Args:
        deltas: ``(K, *shape)`` stack.
        weights: ``(K,)`` weights; their sum must not be 0.
        generator: unused (deterministic).
    Returns:
        The weighted mean.
    """
    total = weights.sum()
    if abs(float(total)) < 1e-12:
        raise MethodError(f"weight_average: the weights {weights.tolist()} sum to 0; a weighted average needs a non-zero sum")
    return torch.tensordot(weights / total, deltas, dims=1)
