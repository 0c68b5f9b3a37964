"""Iso-C: isotropic merging in the common subspace (Marczak et al. 2025, arXiv 2502.04959).

WalkerWorldPeace/MLLMerging ``InternVL/internvl_chat/model_merging.py`` (``iso_merging``):
the SVD of the summed task vectors, with every singular value replaced by their mean.
"""
from __future__ import annotations

import torch

from ..linalg import thin_svd
from ._common import as_matrix, weighted_sum
from .registry import register_method


@register_method(
    "iso_c",
    label="Iso-C",
    help=(
        "Isotropic merging: the SVD U·S·Vᵀ of Σ λ_i·ΔW_i with S flattened to its mean (Marczak et al. "
        "2025; MLLMerging). Dense, the mean runs over all min(m,n) singular values, so a low-rank sum "
        "is spread over directions no expert uses; in core space only the experts' span is flattened."
    ),
    group="subspace",
    formula="U·mean(S)·Vᵀ,  U·S·Vᵀ = SVD(Σ λ_i·ΔW_i)",
)
def iso_c(deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Iso-C of ``Σ_i λ_i·δ_i``.

    Args:
        deltas: ``(K, m, n)`` stack.
        weights: ``(K,)`` λ_i (the published code sums, then scales by α: λ_i = α).
        generator: unused (deterministic).
    Returns:
        ``(m, n)`` merged delta.
    """
    as_matrix(deltas[0], "iso_c")
    u, s, vh = thin_svd(weighted_sum(deltas, weights))
    return (u * s.mean()) @ vh
