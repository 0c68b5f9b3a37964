"""DARE: randomly drop delta entries and rescale the rest, then merge (linear or TIES)."""
from __future__ import annotations

import torch

from ._common import sign_consensus_merge, weighted_sum
from .registry import HyperParam, register_method

_PARAMS = (
    HyperParam(
        "drop_rate",
        default=0.5,
        minimum=0.0,
        maximum=0.99,
        step=0.01,
        help="Probability of dropping each entry of each expert's delta (0 keeps everything).",
    ),
    HyperParam(
        "rescale",
        default=1,
        minimum=0,
        maximum=1,
        step=1,
        help="1: multiply kept entries by 1/(1 − drop_rate) so the expected delta is unchanged.",
        kind="int",
    ),
)

_PAPER = "Yu et al. 2024, 'Language Models are Super Mario'"


def drop_and_rescale(
    deltas: torch.Tensor, drop_rate: float, rescale: int, generator: torch.Generator
) -> torch.Tensor:
    """DARE's Drop And REscale step.

    Every entry of every delta is dropped independently with probability ``drop_rate``
    (one Bernoulli draw per entry from ``generator``, so a seed fixes the masks).

    Args:
        deltas: ``(K, *shape)`` stack.
        drop_rate: drop probability ``p`` in [0, 1).
        rescale: 1 to multiply kept entries by ``1/(1-p)`` (unbiased: E[result] = delta), 0 not to.
        generator: the seeded source of randomness (on the deltas' device).
    Returns:
        ``(K, *shape)`` stack with dropped entries set to 0.
    """
    # rand is in [0, 1): with p = 0 every entry is kept, so DARE reduces exactly to its merge.
    keep = torch.rand(deltas.shape, generator=generator, device=deltas.device, dtype=deltas.dtype) >= drop_rate
    dropped = torch.where(keep, deltas, torch.zeros_like(deltas))
    if rescale and drop_rate > 0:
        dropped = dropped / (1.0 - drop_rate)
    return dropped


@register_method(
    "dare_linear",
    label="DARE (linear)",
    help=(
        f"Randomly drops entries of each expert's delta and rescales the rest, then takes the "
        f"weighted sum ({_PAPER}, DARE)."
    ),
    params=_PARAMS,
)
def dare_linear(
    deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator, drop_rate: float, rescale: int
) -> torch.Tensor:
    """DARE followed by task arithmetic (Yu et al. 2024, arXiv 2311.03099).

    Not ``linear`` in the registry's sense: the random masks make it a weighted sum of
    sparsified deltas, not of the deltas themselves.

    Args:
        deltas: ``(K, *shape)`` stack of task vectors.
        weights: ``(K,)`` coefficients λ_i.
        generator: seeded source of the drop masks.
        drop_rate: drop probability per entry.
        rescale: 1 to rescale kept entries by ``1/(1-drop_rate)``.
    Returns:
        ``Σ_i λ_i·DARE(δ_i)``.
    """
    return weighted_sum(drop_and_rescale(deltas, drop_rate, rescale, generator), weights)


@register_method(
    "dare_ties",
    label="DARE + TIES",
    help=(
        f"DARE's random drop and rescale ({_PAPER}), then TIES sign election and averaging of "
        "the agreeing experts (Yadav et al. 2023); λ act as relative weights."
    ),
    params=_PARAMS,
)
def dare_ties(
    deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator, drop_rate: float, rescale: int
) -> torch.Tensor:
    """DARE followed by TIES' sign election and disjoint mean, without magnitude trimming.

    Args:
        deltas: ``(K, *shape)`` stack of task vectors.
        weights: ``(K,)`` coefficients λ_i.
        generator: seeded source of the drop masks.
        drop_rate: drop probability per entry.
        rescale: 1 to rescale kept entries by ``1/(1-drop_rate)``.
    Returns:
        ``(*shape)`` merged delta (weighted mean of the agreeing, non-dropped entries).
    """
    return sign_consensus_merge(drop_and_rescale(deltas, drop_rate, rescale, generator), weights)
