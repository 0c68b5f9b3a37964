"""DARE: randomly drop delta entries and rescale the rest, then merge (linear or TIES).

The drop probability is the field's ``density`` now (the fraction *kept*, as in mergekit's
``dare_linear``/``dare_ties`` and peft's ``dare_*`` combinations); the old ``drop_rate``
still works in configs (``density = 1 − drop_rate``) with a note. ``drop_seed`` is DARE's
own seed: 0 keeps the engine's per-layer seed unchanged, so earlier results repeat.
"""
from __future__ import annotations

import torch

from ._common import reseed, sign_consensus_merge, weighted_sum
from .registry import HyperParam, Renamed, register_method

DROP_SEED = HyperParam(
    "drop_seed",
    default=0,
    minimum=0,
    maximum=2**31 - 1,
    step=1,
    help="Seed of the random masks (0: the engine's per-layer seed; another value draws other masks).",
    kind="int",
)

_PARAMS = (
    HyperParam(
        "density",
        default=0.5,
        minimum=0.01,
        maximum=1.0,
        step=0.01,
        help="Probability of keeping each entry of each expert's delta (1 keeps everything; was drop_rate = 1 − density).",
    ),
    HyperParam(
        "rescale",
        default=1,
        minimum=0,
        maximum=1,
        step=1,
        help="1: multiply kept entries by 1/density so the expected delta is unchanged.",
        kind="int",
    ),
    DROP_SEED,
)
_RENAMED = (Renamed("drop_rate", "density", complement=True),)

_PAPER = "Yu et al. 2024, 'Language Models are Super Mario'"
_CORE_NOTE = (
    " In core space (@core) the entries dropped are the core's, in the experts' shared bases: "
    "a different operation from full-space DARE, not an approximation of it."
)


def drop_and_rescale(
    deltas: torch.Tensor, density: float, rescale: int, generator: torch.Generator
) -> torch.Tensor:
    """DARE's Drop And REscale step.

    Every entry of every delta is kept independently with probability ``density`` (one
    uniform draw ``u`` per entry from ``generator``, kept when ``u >= 1 − density``: the
    same masks as the former ``drop_rate`` form, so a seed still fixes them).

    Args:
        deltas: ``(K, *shape)`` stack.
        density: keep probability in (0, 1].
        rescale: 1 to multiply kept entries by ``1/density`` (unbiased: E[result] = delta), 0 not to.
        generator: the seeded source of randomness (on the deltas' device).
    Returns:
        ``(K, *shape)`` stack with dropped entries set to 0.
    """
    drop = 1.0 - density
    # rand is in [0, 1): with density 1 every entry is kept, so DARE reduces exactly to its merge.
    keep = torch.rand(deltas.shape, generator=generator, device=deltas.device, dtype=deltas.dtype) >= drop
    dropped = torch.where(keep, deltas, torch.zeros_like(deltas))
    if rescale and density < 1.0:
        dropped = dropped / density
    return dropped


@register_method(
    "dare_linear",
    label="DARE (linear)",
    help=(
        f"Randomly drops entries of each expert's delta and rescales the rest, then takes the "
        f"weighted sum ({_PAPER}, DARE).{_CORE_NOTE}"
    ),
    params=_PARAMS,
    group="sparsifier",
    formula="Σ λ_i·(m_i ⊙ δ_i)/density,  m_i ~ Bernoulli(density)",
    renamed=_RENAMED,
)
def dare_linear(
    deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator, density: float, rescale: int,
    drop_seed: int,
) -> torch.Tensor:
    """DARE followed by task arithmetic (Yu et al. 2024, arXiv 2311.03099).

    Not ``linear`` in the registry's sense: the random masks make it a weighted sum of
    sparsified deltas, not of the deltas themselves.

    Args:
        deltas: ``(K, *shape)`` stack of task vectors.
        weights: ``(K,)`` coefficients λ_i.
        generator: seeded source of the drop masks.
        density: keep probability per entry.
        rescale: 1 to rescale kept entries by ``1/density``.
        drop_seed: DARE's own seed (0: the generator as given).
    Returns:
        ``Σ_i λ_i·DARE(δ_i)``.
    """
    return weighted_sum(drop_and_rescale(deltas, density, rescale, reseed(generator, drop_seed)), weights)


@register_method(
    "dare_ties",
    label="DARE + TIES",
    help=(
        f"DARE's random drop and rescale ({_PAPER}), then TIES sign election and averaging of "
        f"the agreeing experts (Yadav et al. 2023); λ act as relative weights.{_CORE_NOTE}"
    ),
    params=_PARAMS,
    group="sparsifier",
    formula="DARE(δ_i), then TIES: elect sign(Σ λ_i·δ'_i), mean of the agreeing over Σ|λ_i|",
    renamed=_RENAMED,
)
def dare_ties(
    deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator, density: float, rescale: int,
    drop_seed: int,
) -> torch.Tensor:
    """DARE followed by TIES' sign election and disjoint mean, without magnitude trimming.

    Args:
        deltas: ``(K, *shape)`` stack of task vectors.
        weights: ``(K,)`` coefficients λ_i.
        generator: seeded source of the drop masks.
        density: keep probability per entry.
        rescale: 1 to rescale kept entries by ``1/density``.
        drop_seed: DARE's own seed (0: the generator as given).
    Returns:
        ``(*shape)`` merged delta (weighted mean of the agreeing, non-dropped entries).
    """
    return sign_consensus_merge(drop_and_rescale(deltas, density, rescale, reseed(generator, drop_seed)), weights)
