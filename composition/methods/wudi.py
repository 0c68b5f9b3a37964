"""WUDI merging (Cheng et al. 2025, 'Whoever Started the Interference Should End It').

WalkerWorldPeace/MLLMerging ``InternVL/internvl_chat/model_merging.py`` (``wudi_merging``):
minimise ``Σ_i ‖(θ − τ_i)·τ_iᵀ‖²_F / ‖τ_i‖²_F`` (the interference of the merged delta with
each task vector, measured on that task's own row space) by Adam, lr 1e-5, from
``θ₀ = Σ τ_i``, 300 steps. The optimum is early-stopped, not the exact minimiser.

Weights: ``θ₀ = Σ λ_i·τ_i`` and each term is weighted by ``|λ_i|``; with ``λ_i = 1`` this is
the published loss and start exactly (the app's default ``1/K`` starts from the mean).
Experts with ``λ_i = 0`` take no part.
"""
from __future__ import annotations

import torch

from ._common import active, adam_descent, as_matrix, interference_grad, weighted_sum
from .registry import HyperParam, register_method

STEPS = HyperParam("steps", default=300, minimum=0, maximum=2000, step=10,
                   help="Adam steps (the published count is 300; the early-stopped iterate is the published merge).",
                   kind="int")
LR = HyperParam("lr", default=1e-5, minimum=1e-7, maximum=1e-2, step=1e-6,
                help="Adam learning rate (published: 1e-5; each step moves an entry by about lr).")


@register_method(
    "wudi",
    label="WUDI",
    help=(
        "Data-free: Adam on Σ |λ_i|·‖(θ − τ_i)·τ_iᵀ‖²/‖τ_i‖², the interference of the merge with each "
        "expert on its own inputs, from θ₀ = Σ λ_i·τ_i (Cheng et al. 2025; MLLMerging). Early-stopped "
        "after 'steps'. In core space Adam runs on the R×R core (Adam is not rotation-invariant, so "
        "the two differ)."
    ),
    group="subspace",
    formula="Adam_steps min_θ Σ |λ_i|·‖(θ − τ_i)·τ_iᵀ‖²_F/‖τ_i‖²_F from θ₀ = Σ λ_i·τ_i",
    params=(STEPS, LR),
)
def wudi(deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator, steps: int, lr: float) -> torch.Tensor:
    """WUDI (see the module docstring).

    Args:
        deltas: ``(K, m, n)`` stack.
        weights: ``(K,)`` λ_i.
        generator: unused (deterministic).
        steps: Adam steps.
        lr: Adam learning rate.
    Returns:
        ``(m, n)`` merged delta.
    """
    as_matrix(deltas[0], "wudi")
    deltas, weights = active(deltas, weights)
    theta0 = weighted_sum(deltas, weights) if deltas.shape[0] else torch.zeros(deltas.shape[1:], dtype=deltas.dtype)
    norms = [float(d.square().sum()) for d in deltas]
    terms = [(d, d, abs(float(w)) / n) for d, w, n in zip(deltas, weights, norms) if n > 0]
    if not terms:
        return theta0
    targets, projectors, coefficients = map(list, zip(*terms))
    return adam_descent(theta0, interference_grad(targets, projectors, coefficients), steps=steps, lr=lr)
