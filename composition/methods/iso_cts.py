"""Iso-CTS: isotropic merging in common and task-specific subspaces (Marczak et al. 2025, arXiv 2502.04959).

Follows the reference Iso-CTS as ported in tanganke/fusion_bench
``fusion_bench/method/isotropic_merging/iso_utils.py`` (``iso_cts``): the top
``common_space_fraction`` of the summed task vector's singular directions form the common
subspace; each task adds its top directions orthogonal to it, equally many per task; the
concatenated directions are whitened and all singular values set to their mean.
"""
from __future__ import annotations

import torch

from ..linalg import thin_svd
from ._common import active, as_matrix, orthogonalize, weighted_sum
from .registry import HyperParam, register_method


@register_method(
    "iso_cts",
    label="Iso-CTS",
    help=(
        "Iso-C with task-specific subspaces: the common space (top fraction of SVD(Σ λ_i·ΔW_i)) plus "
        "each expert's top directions outside it, whitened, with isotropic singular values "
        "(Marczak et al. 2025)."
    ),
    group="subspace",
    formula="⊥[U_ts,1 … U_ts,N, U_c]·mean(S)·⊥[V_ts,1 … V_ts,N, V_c]ᵀ",
    params=(
        HyperParam(
            "common_space_fraction",
            default=0.8,
            minimum=0.0,
            maximum=1.0,
            step=0.05,
            help="Fraction of the singular directions given to the common subspace (the rest is split among the experts).",
        ),
    ),
)
def iso_cts(
    deltas: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator, common_space_fraction: float
) -> torch.Tensor:
    """Iso-CTS of the weighted task vectors ``λ_i·δ_i``.

    Args:
        deltas: ``(K, m, n)`` stack.
        weights: ``(K,)`` λ_i; experts with λ_i = 0 take no part.
        generator: unused (deterministic).
        common_space_fraction: share of ``min(m, n)`` for the common subspace.
    Returns:
        ``(m, n)`` merged delta.
    """
    as_matrix(deltas[0], "iso_cts")
    deltas, weights = active(deltas, weights)
    if deltas.shape[0] == 0:
        return torch.zeros(deltas.shape[1:], dtype=deltas.dtype, device=deltas.device)
    n_tasks, full = deltas.shape[0], min(deltas.shape[1:])
    common = int(full * common_space_fraction)
    # The task-specific share must split evenly among the experts (as in the reference).
    per_task = round((full - common) / n_tasks)
    common = max(0, full - per_task * n_tasks)
    u, s, vh = thin_svd(weighted_sum(deltas, weights))
    uc, sc, vhc = u[:, :common], s[:common], vh[:common]
    us, ss, vhs = [], [], []
    for delta, w in zip(deltas, weights):
        tv = w * delta
        specific = tv - uc @ (uc.T @ tv)
        ut, st, vht = thin_svd(specific)
        us.append(ut[:, :per_task])
        ss.append(st[:per_task])
        vhs.append(vht[:per_task])
    u_all = torch.cat([*us, uc], dim=1)
    s_all = torch.cat([*ss, sc])
    vh_all = torch.cat([*vhs, vhc], dim=0)
    return (orthogonalize(u_all) * s_all.mean()) @ orthogonalize(vh_all.T).T
