"""SCE (FuseChat, Wan et al. 2024, arXiv 2408.07990): Select by variance, Calculate coefficients, Erase minority signs.

arcee-ai/mergekit ``mergekit/merge_methods/sce.py``: keep the ``select_topk`` fraction of
entries whose variance across the experts is largest (of the non-zero-variance ones), weight
each expert by its mean squared delta (normalised over experts), drop entries against the
majority sign, and divide by the kept weights. mergekit ignores per-model weights; here the
user's λ_i multiply the SCE coefficients (uniform λ gives mergekit's result), signs are
elected on Σ λ_i·δ_i, and experts with λ_i = 0 take no part.
"""
from __future__ import annotations

import torch

from ._common import active
from .registry import HyperParam, register_method


@register_method(
    "sce",
    label="SCE",
    help=(
        "Keeps the entries where the experts differ most (top select_topk by variance), weights each "
        "expert by its mean squared delta, erases minority signs and averages (FuseChat's SCE, mergekit). "
        "With one expert and select_topk < 1 nothing differs, so nothing is kept."
    ),
    group="task_vector",
    formula="Σ ω_i·m ⊙ e_i ⊙ δ_i / Σ ω_i·e_i,  ω_i ∝ λ_i·mean(δ_i²), m = top-variance, e_i = sign agrees",
    params=(
        HyperParam("select_topk", default=1.0, minimum=0.0, maximum=1.0, step=0.05,
                   help="Fraction of the varying entries kept (by variance across experts); 1 keeps all."),
    ),
)
def sce(deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator, select_topk: float) -> torch.Tensor:
    """SCE (see the module docstring).

    Args:
        deltas: ``(K, *shape)`` stack.
        weights: ``(K,)`` λ_i.
        generator: unused (deterministic).
        select_topk: fraction of varying entries kept.
    Returns:
        The merged delta.
    """
    shape = deltas.shape[1:]
    deltas, weights = active(deltas, weights)
    if deltas.shape[0] == 0:
        return torch.zeros(shape, dtype=deltas.dtype, device=deltas.device)
    if select_topk < 1.0:
        variance = deltas.var(dim=0, unbiased=False).reshape(-1)
        k = int(select_topk * int(torch.count_nonzero(variance)))
        mask = torch.zeros_like(variance, dtype=torch.bool)
        if k > 0:
            mask[torch.topk(variance, k).indices] = True
        deltas = deltas * mask.reshape(shape)
    energy = deltas.reshape(deltas.shape[0], -1).square().mean(dim=1)
    total = energy.sum()
    omega = energy / total if float(total) > 0 else torch.full_like(energy, 1.0 / energy.numel())
    omega = omega * weights
    view = omega.view(-1, *([1] * len(shape)))
    elected = torch.where((weights.view_as(view) * deltas).sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
    agrees = torch.sign(deltas) == elected
    numerator = (deltas * view * agrees).sum(dim=0)
    divisor = (view * agrees).sum(dim=0)
    return numerator / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
