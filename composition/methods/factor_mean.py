"""The original ModelCompose scripts' ``mean``: average the LoRA A and B factors separately.

THUNLP-MT/ModelCompose ``scripts/model_composition/merge_unimodal_modelcompose.py``
(strategy ``mean``) averages every adapter tensor by key, so ``lora_A`` and ``lora_B`` are
averaged apart and the merged delta is ``s·B̄·Ā``, which is *not* the mean of the deltas
``(1/K)·Σ s·B_i·A_i``: it adds the cross terms ``B_i·A_j`` (peft's ``linear`` combination
has the same flaw, peft issue #3004). Kept, labelled inexact, only to compare with that
script's non-default ``mean`` strategy: its default strategy is ``sum``, and the original's
documented evaluation path (``online-merge-reset-…``) computes the exact λ-weighted sum of the
deltas, which NaiveMC and DAMC here match (docs/paper-experts.md).
"""
from __future__ import annotations

import torch

from .registry import MethodError, register_method


@register_method(
    "factor_mean",
    label="Factor mean (inexact)",
    help=(
        "INEXACT, to compare with the original merge script's non-default 'mean' strategy (its default is "
        "'sum'; its documented evaluation path is the exact λ-weighted sum, as NaiveMC and DAMC here), "
        "which averages the A and B factors separately (B̄·Ā, with cross terms B_i·A_j), not the "
        "deltas. Needs equal ranks; runs only on the factors (low-rank path)."
    ),
    group="paper",
    formula="(Σ λ_j)·B̄·Ā,  Ā = Σ c_i·A_i,  B̄ = Σ c_i·s_i·B_i,  c_i = λ_i/Σ λ_j",
    spaces=("core",),
    exact=False,
    inputs="factors",
)
def factor_mean(
    factors: list[tuple[torch.Tensor, torch.Tensor]], weights: torch.Tensor, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the factors with relative weights; the product carries ``Σ λ``.

    With ``λ_i = 1/K`` this is the scripts' ``mean`` exactly (``Σ λ = 1``); one expert with
    weight 1 gives that expert.

    Args:
        factors: ``(A_i (r×in), B_i·s_i (out×r))`` per expert, equal ranks.
        weights: ``(K,)`` λ_i, non-zero sum.
        generator: unused (deterministic).
    Returns:
        ``(A, B)`` with ``B @ A`` the merged delta.
    """
    ranks = sorted({a.shape[0] for a, _ in factors})
    if len(ranks) > 1:
        raise MethodError(f"factor_mean averages the factors entry by entry, so all experts need one rank; got ranks {ranks}")
    total = weights.sum()
    if abs(float(total)) < 1e-12:
        raise MethodError(f"factor_mean: the weights {weights.tolist()} sum to 0; the factor mean needs a non-zero sum")
    c = weights / total
    a = sum(ci * ai for ci, (ai, _) in zip(c, factors))
    b = sum(ci * bi for ci, (_, bi) in zip(c, factors))
    return a, b * total
