"""ASWUDI: WUDI's loss minimised in closed form, on an adaptively chosen eigen-subspace.

WalkerWorldPeace/MLLMerging ``LLaMA-Factory/swudi_aswudi.py`` (``aswudi_merge``, defaults
``auto_rank_method="participation_sqrt"``, ``filter_type="none"``, ``init_mode="sum"``).
WUDI's stationarity condition is ``θ·C = D`` with ``C = Σ_i τ_iᵀτ_i/‖τ_i‖²`` and
``D = Σ_i τ_i·τ_iᵀτ_i/‖τ_i‖²``. With ``C = V·Λ·Vᵀ`` and ``F`` the indicator of the top-k
eigenvalues (k by the participation ratio of √λ), the merge is
``θ = θ₀ − θ₀·V·F·Vᵀ + D·V·(F/Λ)·Vᵀ``: solved on the top-k subspace, ``θ₀`` kept elsewhere.
Weights as in WUDI (``θ₀ = Σ λ_i·τ_i``, terms weighted by ``|λ_i|``).
"""
from __future__ import annotations

import math

import torch

from ._common import active, as_matrix, weighted_sum
from .registry import HyperParam, register_method

MIN_EIGENVALUE = 1e-8  # the reference's clamp of C's eigenvalues


def participation_rank(eigenvalues_desc: torch.Tensor) -> int:
    """``⌈(Σ√λ)² / Σλ⌉``: the participation ratio of the singular values (the reference's default rule)."""
    y = eigenvalues_desc.sqrt()
    return math.ceil(float(y.sum().square() / y.square().sum().clamp(min=1e-30)))


@register_method(
    "aswudi",
    label="ASWUDI",
    help=(
        "WUDI's interference loss solved in closed form on the top-k eigen-directions of "
        "Σ |λ_i|·τ_iᵀτ_i/‖τ_i‖², k chosen per layer by a participation ratio; no steps, no learning "
        "rate (MLLMerging LLaMA-Factory/swudi_aswudi.py)."
    ),
    group="subspace",
    formula="θ₀ − θ₀·V F Vᵀ + D·V (F/Λ) Vᵀ,  C = VΛVᵀ = Σ|λ_i|τ_iᵀτ_i/‖τ_i‖², D = Σ|λ_i|τ_iτ_iᵀτ_i/‖τ_i‖²",
    params=(
        HyperParam("rank_scale", default=1.0, minimum=0.1, maximum=4.0, step=0.1,
                   help="Multiplies the adaptive rank k (1 is the reference's zero-hyper-parameter rule)."),
    ),
)
def aswudi(deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator, rank_scale: float) -> torch.Tensor:
    """ASWUDI (see the module docstring).

    Args:
        deltas: ``(K, m, n)`` stack.
        weights: ``(K,)`` λ_i.
        generator: unused (deterministic).
        rank_scale: factor on the adaptive rank.
    Returns:
        ``(m, n)`` merged delta.
    """
    as_matrix(deltas[0], "aswudi")
    deltas, weights = active(deltas, weights)
    if deltas.shape[0] == 0:
        return torch.zeros(deltas.shape[1:], dtype=deltas.dtype, device=deltas.device)
    theta0 = weighted_sum(deltas, weights)
    n = deltas.shape[2]
    c_mat = torch.zeros(n, n, dtype=deltas.dtype, device=deltas.device)
    d_mat = torch.zeros_like(theta0)
    for delta, w in zip(deltas, weights):
        norm = float(delta.square().sum())
        if norm <= 1e-12:
            continue
        gram = delta.T @ delta
        coefficient = abs(float(w)) / norm
        c_mat += coefficient * gram
        d_mat += coefficient * (delta @ gram)
    eigenvalues, vectors = torch.linalg.eigh(c_mat)  # ascending
    eigenvalues = eigenvalues.clamp(min=MIN_EIGENVALUE)
    k = participation_rank(eigenvalues.flip(0))
    k = max(1, min(n, round(k * rank_scale)))
    top = vectors[:, n - k:]
    solved = (d_mat @ top) / eigenvalues[n - k:]
    return theta0 - (theta0 @ top) @ top.T + solved @ top.T
