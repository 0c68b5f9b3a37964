"""Tensor helpers shared by several merge methods (pure functions, no validation).

The callers (the method functions) receive already-validated inputs from
:func:`composition.methods.merge_deltas`: ``deltas`` is a ``(K, *shape)`` stack and
``weights`` a ``(K,)`` tensor of the same dtype and device.
"""
from __future__ import annotations

import torch


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
