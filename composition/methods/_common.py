"""Tensor helpers shared by several merge methods (pure functions, no validation).

The callers (the method functions) receive already-validated inputs from
:func:`composition.methods.merge_deltas`: ``deltas`` is a ``(K, *shape)`` stack and
``weights`` a ``(K,)`` tensor of the same dtype and device.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..linalg import thin_svd


def per_expert(weights: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Reshape ``(K,)`` weights so they broadcast against a ``(K, *shape)`` stack.

    Args:
        weights: ``(K,)`` coefficients.
        deltas: ``(K, *shape)`` stack.
    Returns:
        ``weights`` viewed as ``(K, 1, ..., 1)``.
    """
    return weights.view(-1, *([1] * (deltas.dim() - 1)))


def weighted_sum(deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ_i w_i·δ_i`` over the first axis.

    Args:
        deltas: ``(K, *shape)`` stack.
        weights: ``(K,)`` coefficients.
    Returns:
        ``(*shape)`` tensor.
    """
    # tensordot contracts K without materializing the (K, *shape) weighted copy.
    return torch.tensordot(weights, deltas, dims=1)


def sign_consensus_merge(deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """TIES sign election followed by the disjoint (weighted) mean.

    Sign election (Yadav et al. 2023, §3, "elect"): per entry, the elected sign is the sign
    of the total weighted mass ``Σ_i w_i·δ_i``. Where that mass is exactly zero no sign
    wins and the entry is 0 (we do not break the tie towards +, which would bias merges).

    Disjoint mean ("disjoint merge"): per entry, the contributors are the deltas whose
    weighted value ``w_i·δ_i`` is nonzero and has the elected sign; the result is their
    weighted mean::

        out = Σ_{i agrees} w_i·δ_i / Σ_{i agrees} |w_i|      (0 where nobody agrees)

    i.e. we divide by the sum of the weights of the agreeing contributors (mergekit's
    convention), not by their count (peft's ``disjoint_merge``). Why: with the app's default
    ``w_i = 1/K``, nothing trimmed and no sign conflict, this equals task arithmetic (the
    plain mean of the deltas, NaiveMC), so TIES differs from NaiveMC only where TIES is
    meant to; dividing by the count would shrink it ``K``-fold. Consequence: the weights
    act as *relative* weights (scaling all of them by ``c > 0`` changes nothing); with
    equal weights the result is the paper's ``τ_m`` (its λ = 1). ``|w_i|`` instead of
    ``w_i`` keeps the divisor positive with negative weights, so every nonzero output entry
    has the elected sign.

    Args:
        deltas: ``(K, *shape)`` stack, already sparsified (trimmed or dropped).
        weights: ``(K,)`` coefficients.
    Returns:
        ``(*shape)`` merged tensor.
    """
    w = per_expert(weights, deltas)
    weighted = deltas * w
    elected = torch.sign(weighted.sum(dim=0))
    # sign(x) == elected != 0 implies x != 0, so zeroed (trimmed/dropped) entries never count.
    agrees = (torch.sign(weighted) == elected) & (elected != 0)
    numerator = torch.where(agrees, weighted, torch.zeros_like(weighted)).sum(dim=0)
    denominator = (agrees * w.abs()).sum(dim=0)
    # Where nobody agrees the numerator is 0 as well; divide by 1 there instead of 0.
    return numerator / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def keep_largest(deltas: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the ``k`` largest-magnitude entries of each delta of the stack, zero the rest.

    Among entries of equal magnitude at the threshold, the lowest flat indices are kept,
    so exactly ``k`` entries survive and the choice does not depend on the device.

    Args:
        deltas: ``(K, *shape)`` stack.
        k: entries kept per delta, ``0 <= k <= numel``.
    Returns:
        ``(K, *shape)`` stack.
    """
    flat = deltas.reshape(deltas.shape[0], -1)
    numel = flat.shape[1]
    if k >= numel:
        return deltas
    if k <= 0:
        return torch.zeros_like(deltas)
    magnitude = flat.abs()
    # The k-th largest magnitude, found in O(n) (no full sort of a large layer).
    threshold = torch.kthvalue(magnitude, numel - k + 1, dim=1, keepdim=True).values
    above = magnitude > threshold
    at = magnitude == threshold
    still_needed = k - above.sum(dim=1, keepdim=True)
    # Rank of each threshold-equal entry in index order: take the first `still_needed`.
    rank_at = torch.cumsum(at, dim=1)
    keep = above | (at & (rank_at <= still_needed))
    return torch.where(keep, flat, torch.zeros_like(flat)).reshape(deltas.shape)


def reseed(generator: torch.Generator, drop_seed: int) -> torch.Generator:
    """The generator for a method's own seed hyper-parameter (``drop_seed``).

    ``merge_deltas`` seeds ``generator`` with the engine's per-layer seed; a user seed of 0
    leaves it as it is (so results published before the seed was exposed repeat exactly),
    any other value mixes in (splitmix-style odd constant, wrapped to 64 bits).

    Args:
        generator: the seeded generator ``merge_deltas`` passed.
        drop_seed: the method's seed hyper-parameter (an int ``>= 0``).
    Returns:
        The same generator, re-seeded when ``drop_seed`` is not 0.
    """
    if drop_seed:
        generator.manual_seed((generator.initial_seed() + drop_seed * 0x9E3779B97F4A7C15) % 2**64)
    return generator


def active(deltas: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The experts whose weight is not zero (methods that normalise by ‖τ_i‖ or count experts skip the rest).

    Args:
        deltas: ``(K, *shape)`` stack.
        weights: ``(K,)`` coefficients.
    Returns:
        ``(deltas, weights)`` restricted to ``w_i != 0`` (possibly empty).
    """
    keep = weights != 0
    return deltas[keep], weights[keep]


def as_matrix(delta: torch.Tensor, method: str) -> torch.Tensor:
    """Check that a delta is a matrix (the subspace methods work on the SVD of a linear layer's delta)."""
    from .registry import MethodError

    if delta.dim() != 2:
        raise MethodError(
            f"method {method!r} works on the 2-D delta of a linear layer; got shape {tuple(delta.shape)}"
        )
    return delta


def orthogonalize(columns: torch.Tensor) -> torch.Tensor:
    """The nearest matrix with orthonormal columns (polar factor ``P·Qᵀ`` of ``columns = P·Σ·Qᵀ``).

    TSV-M and Iso-CTS use it to whiten the concatenated per-task singular vectors
    (MLLMerging ``svd_merging``: ``u_u @ v_u`` of ``svd(sum_u)``).
    """
    p, _, qh = thin_svd(columns)
    return p @ qh


def adam_descent(
    theta0: torch.Tensor, grad: Callable[[torch.Tensor], torch.Tensor], *, steps: int, lr: float
) -> torch.Tensor:
    """``steps`` Adam steps (torch defaults: betas 0.9/0.999, eps 1e-8) from ``theta0`` on a given gradient.

    WUDI and OptMerge minimise a quadratic whose gradient is cheap in closed form, so no
    autograd graph is built; ``torch.optim.Adam`` does the update (the published code's
    optimizer, MLLMerging ``InternVL/internvl_chat/model_merging.py``).

    Args:
        theta0: the starting point (not modified).
        grad: ``theta -> ∂loss/∂theta``.
        steps: number of updates (0 returns a copy of ``theta0``).
        lr: Adam's learning rate.
    Returns:
        The final iterate.
    """
    theta = torch.nn.Parameter(theta0.clone())
    optimizer = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        theta.grad = grad(theta.detach())
        optimizer.step()
    return theta.detach()


def interference_grad(
    targets: list[torch.Tensor], projectors: list[torch.Tensor], coefficients: list[float]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Gradient of ``Σ_i c_i·‖(θ − t_i)·P_iᵀ‖²_F`` (WUDI's and OptMerge's interference loss).

    ``∂/∂θ = Σ_i 2·c_i·(θ − t_i)·P_iᵀ·P_i = θ·C − D`` with ``C = Σ_i 2·c_i·P_iᵀP_i`` and
    ``D = Σ_i 2·c_i·t_i·P_iᵀP_i``, both fixed: each Adam step then costs one product instead
    of one or two per expert (WUDI on a 576×576 layer of four experts: 8 matmuls a step
    become 1). ``C`` is ``(n, n)``; when the stacked projectors have fewer rows than ``n/2``
    the step uses them instead (``(θ·Pᵀ)·P``, fewer flops and less memory).
    """
    n = targets[0].shape[-1]
    stacked = torch.cat([p * math.sqrt(2.0 * c) for p, c in zip(projectors, coefficients)])  # Σ_i 2c_i P_iᵀP_i = stackedᵀ·stacked
    offset = sum(((t @ p.T) @ p) * (2.0 * c) for t, p, c in zip(targets, projectors, coefficients))  # D
    if 2 * stacked.shape[0] < n:
        return lambda theta: (theta @ stacked.T) @ stacked - offset
    gram = stacked.T @ stacked  # C
    return lambda theta: theta @ gram - offset
