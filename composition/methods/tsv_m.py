"""TSV-M: Task Singular Vectors merging (Gargiulo et al. 2025, arXiv 2412.00081).

Follows WalkerWorldPeace/MLLMerging ``InternVL/internvl_chat/model_merging.py``
(``svd_merging``): each task keeps its top ``k = ⌊min(m,n)/N⌋`` singular triplets; the
concatenated left and right singular vectors are whitened (replaced by their polar
factors, which decorrelates the tasks' subspaces) and recombined with the kept singular
values. The published code zero-pads the unused columns; we orthogonalize only the used
``N·k`` ones, which is the same result whenever they have full column rank.
"""
from __future__ import annotations

import torch

from ..linalg import thin_svd
from ._common import active, as_matrix, orthogonalize
from .registry import register_method


@register_method(
    "tsv_m",
    label="TSV-M",
    help=(
        "Task Singular Vectors: keeps each expert's top ⌊min(m,n)/N⌋ singular directions, "
        "whitens the concatenated directions and recombines them (Gargiulo et al. 2025; MLLMerging). "
        "In core space k = ⌊R/N⌋, which for N rank-r LoRA experts is exactly each expert's r directions."
    ),
    group="subspace",
    formula="⊥[U_1,k … U_N,k]·diag(S_1,k … S_N,k)·⊥[V_1,k … V_N,k]ᵀ of SVD(λ_i·δ_i), k = ⌊min(m,n)/N⌋",
)
def tsv_m(deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """TSV-M of the weighted task vectors ``λ_i·δ_i`` (λ_i = α gives α·TSV-M, the published scaling).

    Args:
        deltas: ``(K, m, n)`` stack.
        weights: ``(K,)`` λ_i; experts with λ_i = 0 take no part (nor count in N).
        generator: unused (deterministic).
    Returns:
        ``(m, n)`` merged delta.
    """
    as_matrix(deltas[0], "tsv_m")
    deltas, weights = active(deltas, weights)
    if deltas.shape[0] == 0:
        return torch.zeros(deltas.shape[1:], dtype=deltas.dtype, device=deltas.device)
    n_tasks = deltas.shape[0]
    k = max(1, min(deltas.shape[1:]) // n_tasks)
    us, ss, vhs = [], [], []
    for delta, w in zip(deltas, weights):
        u, s, vh = thin_svd(w * delta)
        us.append(u[:, :k])
        ss.append(s[:k])
        vhs.append(vh[:k])
    u_cat, s_cat, vh_cat = torch.cat(us, dim=1), torch.cat(ss), torch.cat(vhs, dim=0)
    return (orthogonalize(u_cat) * s_cat) @ orthogonalize(vh_cat.T).T
