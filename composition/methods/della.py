"""DELLA-Merging (Deep et al. 2024, arXiv 2406.11617): magnitude-ranked random drop, then TIES' consensus.

arcee-ai/mergekit ``mergekit/sparsify.py`` (``della_magprune``) and
``mergekit/merge_methods/registry.py`` (``della``: sum consensus, normalised, rescaled) and
``generalized_task_arithmetic.py`` (sparsify each delta, elect signs on the weighted
deltas, divide by the agreeing weights, multiply by λ). Per row, entries are ranked by
magnitude; the keep probability rises linearly from ``density − ε`` (smallest) to
``density + ε`` (largest). Kept entries are divided by their keep probability (the
paper's rescaling; newer mergekit rescales to the l1 norm instead).
"""
from __future__ import annotations

import torch

from ._common import reseed, sign_consensus_merge
from .dare import DROP_SEED
from .registry import HyperParam, MethodError, register_method


def keep_probabilities(deltas: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """``density − ε + 2ε·rank/(n−1)`` per entry, ranks by magnitude within each row (last axis)."""
    rows = deltas.reshape(-1, deltas.shape[-1])
    n = rows.shape[1]
    ranks = torch.sort(rows.abs(), dim=1, stable=True).indices.argsort(dim=1).to(deltas.dtype)
    scaled = ranks / (n - 1) if n > 1 else torch.full_like(ranks, 0.5)
    return ((density - epsilon) + 2 * epsilon * scaled).reshape(deltas.shape)


@register_method(
    "della",
    label="DELLA",
    help=(
        "MAGPRUNE: drops entries at random, larger magnitudes kept more often (density ± ε), rescales "
        "by the keep probability, then TIES sign election and the mean of the agreeing experts, times "
        "λ_scale (Deep et al. 2024; mergekit's della). In core space (@core) the entries are the core's."
    ),
    group="sparsifier",
    formula="λ_scale·TIES-mean(m_i ⊙ δ_i / p_i),  m_i ~ Bernoulli(p_i),  p_i = density ± ε by magnitude rank",
    params=(
        HyperParam("density", default=0.5, minimum=0.01, maximum=1.0, step=0.01,
                   help="Mean keep probability per entry (1 keeps everything)."),
        HyperParam("epsilon", default=0.1, minimum=0.0, maximum=0.49, step=0.01,
                   help="Spread of the keep probability between the smallest and largest magnitudes (density ± ε)."),
        HyperParam("lambda_scale", default=1.0, minimum=0.0, maximum=4.0, step=0.05,
                   help="Scale of the merged delta (mergekit's lambda)."),
        DROP_SEED,
    ),
)
def della(
    deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator, density: float, epsilon: float,
    lambda_scale: float, drop_seed: int,
) -> torch.Tensor:
    """DELLA (see the module docstring).

    Args:
        deltas: ``(K, *shape)`` stack.
        weights: ``(K,)`` λ_i (relative weights in the consensus mean).
        generator: seeded source of the masks.
        density: mean keep probability.
        epsilon: half-spread of the keep probability.
        lambda_scale: factor on the result.
        drop_seed: DELLA's own seed (0: the generator as given).
    Returns:
        The merged delta.
    """
    if density < 1.0:
        if not (0.0 < density - epsilon and density + epsilon < 1.0):
            raise MethodError(
                f"della: density={density} and epsilon={epsilon} give keep probabilities outside (0, 1); "
                "choose epsilon < min(density, 1 − density)"
            )
        probs = keep_probabilities(deltas, density, epsilon)
        draws = torch.rand(deltas.shape, generator=reseed(generator, drop_seed), device=deltas.device, dtype=deltas.dtype)
        deltas = torch.where(draws < probs, deltas / probs, torch.zeros_like(deltas))
    return lambda_scale * sign_consensus_merge(deltas, weights)
