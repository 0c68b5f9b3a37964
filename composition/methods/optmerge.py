"""OptMerge (Wei et al. 2025, the MLLMerging benchmark's own method; ``wudi2`` in its code).

Follows WalkerWorldPeace/MLLMerging ``InternVL/internvl_chat/model_merging.py``
(``wudi_merging2``). That repository holds three copies that differ (the LLaMA-Factory and
Qwen copies change the targets or the start); this one is followed:

- denoised targets ``τ̂_i = τ̄ + SVD_K(τ_i − τ̄)``, ``τ̄`` the mean task vector, ``K = ⌊min(m,n)/N⌋``;
- projector ``P_i = S_K·V_Kᵀ`` of ``τ_i``'s own SVD (its top-K input directions, scaled);
- loss ``Σ_i ‖(θ − τ̂_i)·P_iᵀ‖²_F / ‖τ_i‖²_F``, Adam lr 1e-5 from ``θ₀ = Σ τ_i``, 300 steps.

The published merge is the early-stopped iterate, not the exact minimiser, so ``steps`` is
a hyper-parameter. Weights as in WUDI: ``θ₀ = Σ λ_i·τ_i``, terms weighted by ``|λ_i|``
(``λ_i = 1`` is the published loss and start), experts with ``λ_i = 0`` take no part.
"""
from __future__ import annotations

import torch

from ..linalg import thin_svd
from ._common import active, adam_descent, as_matrix, interference_grad, weighted_sum
from .registry import register_method
from .wudi import LR, STEPS


def denoised_targets(deltas: torch.Tensor, k: int) -> list[torch.Tensor]:
    """``τ̄ + SVD_k(τ_i − τ̄)`` per task: the shared part kept, each task's own part truncated to rank ``k``."""
    mean = deltas.mean(dim=0)
    targets = []
    for delta in deltas:
        u, s, vh = thin_svd(delta - mean)
        targets.append(mean + (u[:, :k] * s[:k]) @ vh[:k])
    return targets


def projector(delta: torch.Tensor, k: int) -> torch.Tensor:
    """``S_k·V_kᵀ`` of ``delta``'s SVD: ``(k, n)``."""
    _, s, vh = thin_svd(delta)
    return s[:k, None] * vh[:k]


@register_method(
    "optmerge",
    label="OptMerge",
    help=(
        "The MLLMerging benchmark's method: Adam on the interference of the merge with denoised "
        "targets τ̄ + SVD_K(τ_i − τ̄), measured on each expert's top-K directions S_K·V_Kᵀ, from "
        "θ₀ = Σ λ_i·τ_i (Wei et al. 2025; the InternVL copy of 'wudi2'). Early-stopped after 'steps'."
    ),
    group="subspace",
    formula="Adam_steps min_θ Σ |λ_i|·‖(θ − τ̄ − SVD_K(τ_i − τ̄))·(S_K V_Kᵀ)_iᵀ‖²_F/‖τ_i‖²_F, K = ⌊min(m,n)/N⌋",
    params=(STEPS, LR),
)
def optmerge(deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator, steps: int, lr: float) -> torch.Tensor:
    """OptMerge (see the module docstring).

    Args:
        deltas: ``(K, m, n)`` stack.
        weights: ``(K,)`` λ_i.
        generator: unused (deterministic).
        steps: Adam steps.
        lr: Adam learning rate.
    Returns:
        ``(m, n)`` merged delta.
    """
    as_matrix(deltas[0], "optmerge")
    deltas, weights = active(deltas, weights)
    if deltas.shape[0] == 0:
        return torch.zeros(deltas.shape[1:], dtype=deltas.dtype, device=deltas.device)
    theta0 = weighted_sum(deltas, weights)
    k = max(1, min(deltas.shape[1:]) // deltas.shape[0])
    targets = denoised_targets(deltas, k)
    norms = [float(d.square().sum()) for d in deltas]
    terms = [(t, projector(d, k), abs(float(w)) / n) for t, d, w, n in zip(targets, deltas, weights, norms) if n > 0]
    if not terms:
        return theta0
    targets, projectors, coefficients = map(list, zip(*terms))
    return adam_descent(theta0, interference_grad(targets, projectors, coefficients), steps=steps, lr=lr)
