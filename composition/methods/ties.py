"""TIES-Merging: trim small entries, elect a sign per entry, average the agreeing ones."""
from __future__ import annotations

import torch

from ._common import keep_largest, sign_consensus_merge
from .registry import HyperParam, register_method


def kept_count(density: float, numel: int) -> int:
    """Number of entries TIES keeps per delta.

    Args:
        density: fraction to keep, in [0, 1].
        numel: entries per delta.
    Returns:
        ``round(density·numel)``, halves rounded up (not Python's half-to-even).
    """
    return min(numel, int(density * numel + 0.5))


def trim_by_magnitude(deltas: torch.Tensor, density: float) -> torch.Tensor:
    """Keep exactly the ``k = kept_count(density, numel)`` largest-magnitude entries of each delta.

    Among entries of equal magnitude at the threshold, the lowest flat indices are kept,
    so exactly ``k`` entries survive and the choice does not depend on the device.

    Args:
        deltas: ``(K, *shape)`` stack.
        density: fraction of entries to keep per delta, in [0, 1].
    Returns:
        ``(K, *shape)`` stack with all but the top ``k`` entries of each delta set to 0.
    """
    return keep_largest(deltas, kept_count(density, deltas[0].numel()))


@register_method(
    "ties",
    label="TIES",
    help=(
        "Keeps each expert's largest-magnitude entries, elects a sign per entry and averages "
        "only the experts that agree with it (Yadav et al. 2023, 'TIES-Merging'); λ act as "
        "relative weights. In core space (ties@core) the masks act on the core's entries in the "
        "experts' shared bases: a different operation from full-space TIES, not an approximation of it."
    ),
    group="task_vector",
    formula="trim to top-density |δ_i|; elect sign(Σ λ_i·δ_i); mean of the agreeing λ_i·δ_i over Σ|λ_i|",
    params=(
        HyperParam(
            "density",
            default=0.5,
            minimum=0.0,
            maximum=1.0,
            step=0.05,
            help="Fraction of each expert's delta kept (largest magnitudes); 1 keeps everything.",
        ),
    ),
)
def ties(deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator, density: float) -> torch.Tensor:
    """TIES-Merging (Yadav et al. 2023, arXiv 2306.01708): trim, elect sign, disjoint merge.

    Default density 0.5 rather than the paper's 0.2: the paper merges up to 11 full
    fine-tunes, where little of each survives the sign vote anyway; we merge 2–4 LoRA
    deltas, which are dense but low-rank, and trimming 80 % of a rank-r delta destroys
    much of it (mergekit's TIES examples also use 0.5 for a few models).

    Args:
        deltas: ``(K, *shape)`` stack of task vectors.
        weights: ``(K,)`` coefficients λ_i (used in the sign vote and the weighted mean).
        generator: unused (deterministic method).
        density: fraction of entries kept per delta by magnitude.
    Returns:
        ``(*shape)`` merged delta; see :func:`~composition.methods._common.sign_consensus_merge`
        for the exact averaging (divides by the sum of agreeing weights).
    """
    return sign_consensus_merge(trim_by_magnitude(deltas, density), weights)
