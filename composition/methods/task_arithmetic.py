"""Task arithmetic: the weighted sum of the deltas (NaiveMC and DAMC's text merge)."""
from __future__ import annotations

import torch

from ._common import weighted_sum
from .registry import register_method


@register_method(
    "task_arithmetic",
    label="Task arithmetic",
    help=(
        "Weighted sum Σ λ_i·ΔW_i of the experts' deltas (Ilharco et al. 2023, 'Editing Models "
        "with Task Arithmetic'); with λ_i = 1/K it is NaiveMC/DAMC's exact mean of the deltas. "
        "Core space gives exactly the same delta (the cores span every expert)."
    ),
    linear=True,
    group="task_vector",
    formula="Σ λ_i·ΔW_i",
)
def task_arithmetic(deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Merge by weighted sum (Ilharco et al. 2023, arXiv 2212.04089).

    Args:
        deltas: ``(K, *shape)`` stack of task vectors ``δ_i``.
        weights: ``(K,)`` scaling coefficients ``λ_i``.
        generator: unused (deterministic method); part of the common method signature.
    Returns:
        ``Σ_i λ_i·δ_i`` with shape ``shape``.
    """
    return weighted_sum(deltas, weights)
