"""Model Breadcrumbs (Davari & Belilovsky 2024, arXiv 2312.06795): drop the smallest and the largest entries.

arcee-ai/mergekit ``mergekit/sparsify.py`` (``magnitude_outliers``) and
``mergekit/merge_methods/registry.py`` (``breadcrumbs``: that sparsifier, no consensus, no
normalisation, i.e. the weighted sum). Per delta, the ``int(γ·numel)`` largest magnitudes
are removed first, then the smallest until ``int(density·numel)`` entries remain.
mergekit slices ``[n_bot:-n_top]``, which keeps nothing when ``n_top`` is 0; we keep the
intended ``[n_bot, numel − n_top)``.
"""
from __future__ import annotations

import torch

from ._common import weighted_sum
from .registry import HyperParam, register_method


def breadcrumb_mask(deltas: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """The kept entries per delta: ranks ``[n_bot, numel − n_top)`` of the magnitudes (ascending, stable)."""
    flat = deltas.reshape(deltas.shape[0], -1)
    numel = flat.shape[1]
    target = int(density * numel)
    n_top = int(gamma * numel)
    n_bot = numel - target - n_top
    if n_bot < 0:  # fewer outliers removed, so the density is reached
        n_top += n_bot
        n_bot = 0
    order = torch.sort(flat.abs(), dim=1, stable=True).indices
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep.scatter_(1, order[:, n_bot:numel - n_top], True)
    return keep.reshape(deltas.shape)


@register_method(
    "breadcrumbs",
    label="Model Breadcrumbs",
    help=(
        "Removes each expert's largest γ outliers and its smallest entries down to 'density', then the "
        "weighted sum (Davari & Belilovsky 2024; mergekit's breadcrumbs). In core space (@core) the "
        "entries are the core's: a different operation from full-space Breadcrumbs."
    ),
    group="sparsifier",
    formula="Σ λ_i·m_i ⊙ δ_i,  m_i keeps magnitude ranks between the bottom (1 − density − γ) and the top γ",
    params=(
        HyperParam("density", default=0.9, minimum=0.0, maximum=1.0, step=0.01,
                   help="Fraction of each expert's delta kept."),
        HyperParam("gamma", default=0.01, minimum=0.0, maximum=0.5, step=0.005,
                   help="Fraction of largest-magnitude entries removed as outliers."),
    ),
)
def breadcrumbs(
    deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator, density: float, gamma: float
) -> torch.Tensor:
    """``Σ_i λ_i·breadcrumbs(δ_i)``.

    Args:
        deltas: ``(K, *shape)`` stack.
        weights: ``(K,)`` λ_i.
        generator: unused (deterministic).
        density: fraction kept per delta.
        gamma: fraction of top outliers removed.
    Returns:
        The merged delta.
    """
    if density >= 1.0:
        return weighted_sum(deltas, weights)
    mask = breadcrumb_mask(deltas, density, gamma)
    return weighted_sum(torch.where(mask, deltas, torch.zeros_like(deltas)), weights)
