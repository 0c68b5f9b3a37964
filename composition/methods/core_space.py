"""The low-rank core space: run any merge method on the experts' ``R×R`` cores, keep the result low-rank.

K LoRA experts of rank r at one layer, ``ΔW_i = s_i·B_i·A_i``, span at most ``K·r`` rows of
input space (the rows of all ``A_i``) and ``K·r`` columns of output space (the columns of
all ``B_i``). With orthonormal bases ``V`` (``in × R_A``) of the first and ``U``
(``out × R_B``) of the second, every delta is exactly ``ΔW_i = U·M_i·Vᵀ`` with the core
``M_i = Uᵀ·(s_i·B_i)·(A_i·V)`` (``R_B × R_A``, ``R ≤ K·r``). A method merges the cores
``M_i`` into ``M``; the merged delta ``U·M·Vᵀ`` has rank ``≤ min(R_A, R_B) ≤ K·r`` and is
returned as factors, so the routed layers apply it online like an expert (no dense
per-layer result, nothing recomputed when another variant needs the layer).

Linear methods give exactly their dense result (task arithmetic: ``Σ λ_i·U·M_i·Vᵀ =
Σ λ_i·ΔW_i``). Methods that act on singular values (TSV-M, Iso-C/CTS) see the same
spectrum up to the zero singular values outside the span. Element-wise methods (TIES,
DARE, magnitude pruning, Breadcrumbs, DELLA, SCE) and Adam (WUDI, OptMerge) depend on the
basis: their core-space form is a different operation, offered beside the dense one.

Following apanariello4/core-space-merging (``task_merger.py``: per-layer SVD of the
concatenated task matrices, merge in the reduced coordinates, map back). The bases here are
the SVDs of ``[A_1; …; A_K]`` and ``[s_1·B_1, …, s_K·B_K]`` with directions below
``rtol·σ_max`` dropped (so K identical experts give R = r) and each basis vector's sign
fixed (its largest-magnitude entry positive), which makes the bases — and so every
core-space result — independent of the experts' order for generic inputs.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch

from ..linalg import thin_svd
from .registry import MethodError, check_seed, get_method, merge_deltas

Factors = tuple[torch.Tensor, torch.Tensor, float]  # (A (r×in), B (out×r), scale)


def signed_basis(matrix: torch.Tensor, rtol: float) -> torch.Tensor:
    """Orthonormal columns spanning the columns of ``matrix`` (``rows × R``), order- and sign-canonical.

    Args:
        matrix: ``(rows, cols)``.
        rtol: directions with singular value ``<= rtol·σ_max`` are dropped.
    Returns:
        ``(rows, R)`` with ``R >= 1`` (a zero matrix gives one zero column).
    """
    u, s, _ = thin_svd(matrix)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return torch.zeros(matrix.shape[0], 1, dtype=matrix.dtype, device=matrix.device)
    u = u[:, s > rtol * s[0]]
    pivot = u.abs().argmax(dim=0)
    signs = torch.sign(u[pivot, torch.arange(u.shape[1], device=u.device)])
    return u * torch.where(signs == 0, torch.ones_like(signs), signs)


def core_bases(factors: Sequence[Factors], rtol: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U (out × R_B), V (in × R_A))``: orthonormal bases of the experts' output and input spans.

    Args:
        factors: ``(A_i, B_i, s_i)`` per expert, already in the compute dtype.
        rtol: relative tolerance for dropping directions (default ``max(shape)·eps``).
    """
    a_cat = torch.cat([a for a, _, _ in factors], dim=0)  # (Σr, in)
    b_cat = torch.cat([b * s for _, b, s in factors], dim=1)  # (out, Σr)
    if rtol is None:
        rtol = max(a_cat.shape[1], b_cat.shape[0]) * torch.finfo(a_cat.dtype).eps
    return signed_basis(b_cat, rtol), signed_basis(a_cat.T, rtol)


def cores(factors: Sequence[Factors], u: torch.Tensor, v: torch.Tensor) -> list[torch.Tensor]:
    """``M_i = Uᵀ·(s_i·B_i)·(A_i·V)`` per expert: ``(R_B, R_A)`` each."""
    return [(u.T @ (b * s)) @ (a @ v) for a, b, s in factors]


def core_merge(
    method: str,
    factors: Sequence[Factors],
    weights: Sequence[float],
    hyper: Mapping[str, object] | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Merge one layer's experts in the core space; the result stays low-rank.

    Args:
        method: a registered method that runs in ``"core"`` space (see ``MergeMethod.spaces``).
        factors: one ``(A_i (r_i × in), B_i (out × r_i), scale_i)`` per expert, ``ΔW_i = scale_i·B_i·A_i``
            (ranks may differ; same in/out, dtype and device).
        weights: one finite λ_i per expert.
        hyper: the method's hyper-parameters (old names accepted, as in ``merge_deltas``).
        seed: seeds the method's randomness (the engine passes its per-layer seed).
    Returns:
        ``(A (R × in), B (out × R), scale)`` with ``scale·B @ A`` the merged delta and
        ``R <= Σ r_i``; in the factors' dtype (half inputs are merged in float32).
    Raises:
        MethodError: unknown method, a method without a core form, bad factors or values.
    """
    spec = get_method(method)
    if "core" not in spec.spaces:
        raise MethodError(f"method {method!r} runs only in {', '.join(spec.spaces)} space, not in the core space")
    check_seed(seed)
    work = _check_factors(factors, len(weights) if isinstance(weights, Sequence) else None)
    if spec.inputs == "factors":
        values, _ = spec.resolve_hyper(dict(hyper or {}))
        w = torch.tensor([_weight(x, i) for i, x in enumerate(weights)], dtype=work[0][0].dtype, device=work[0][0].device)
        generator = torch.Generator(device=w.device).manual_seed(seed)
        with torch.no_grad():
            a, b = spec.func([(a, b * s) for a, b, s in work], w, generator=generator, **values)
        return _finish(a, b, factors[0][0].dtype, method)
    with torch.no_grad():
        u, v = core_bases(work)
        core = merge_deltas(method, cores(work, u, v), list(weights), seed=seed, **dict(hyper or {}))
    if u.shape[1] <= v.shape[1]:
        a, b = core @ v.T, u  # rank R_B: A = M·Vᵀ, B = U
    else:
        a, b = v.T, u @ core  # rank R_A: A = Vᵀ, B = U·M
    return _finish(a, b, factors[0][0].dtype, method)


def _finish(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, method: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    a, b = a.to(dtype).contiguous(), b.to(dtype).contiguous()
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        raise MethodError(f"method {method!r} produced non-finite factors in core space; use smaller weights or a wider dtype")
    return a, b, 1.0


def _weight(value: object, i: int) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(float(value)):
        raise MethodError(f"weight {i} is {value!r}; weights must be finite numbers")
    return float(value)


def _check_factors(factors: Sequence[Factors], count: int | None) -> list[Factors]:
    """Validate the experts' factors and return them in the compute dtype (float32 for half inputs)."""
    if isinstance(factors, torch.Tensor) or not isinstance(factors, Sequence) or len(factors) == 0:
        raise MethodError("factors must be a non-empty list of (A, B, scale), one per expert")
    if count is not None and count != len(factors):
        raise MethodError(f"got {count} weights for {len(factors)} experts; give one weight per expert")
    first_a = factors[0][0] if isinstance(factors[0], (tuple, list)) and len(factors[0]) == 3 else None
    work = []
    for i, item in enumerate(factors):
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise MethodError(f"factors[{i}] must be (A, B, scale), got {type(item).__name__}")
        a, b, scale = item
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.dim() != 2 or b.dim() != 2:
            raise MethodError(f"expert {i}: A and B must be 2-D tensors (A: rank × in, B: out × rank)")
        if not a.is_floating_point() or a.dtype != b.dtype:
            raise MethodError(f"expert {i}: A and B must share one floating dtype, got {a.dtype} and {b.dtype}")
        if a.shape[0] != b.shape[1]:
            raise MethodError(f"expert {i}: A is {tuple(a.shape)} and B is {tuple(b.shape)}; A's rows must equal B's columns (the rank)")
        if first_a is not None and (a.shape[1] != first_a.shape[1] or b.shape[0] != factors[0][1].shape[0]):
            raise MethodError(
                f"expert {i}: delta shape ({b.shape[0]}, {a.shape[1]}) differs from expert 0's "
                f"({factors[0][1].shape[0]}, {first_a.shape[1]}); all experts of a layer need one shape"
            )
        if a.dtype != first_a.dtype or a.device != first_a.device or b.device != first_a.device:
            raise MethodError(f"expert {i}: factors must share expert 0's dtype {first_a.dtype} and device {first_a.device}")
        if not isinstance(scale, numbers.Real) or isinstance(scale, bool) or not math.isfinite(float(scale)):
            raise MethodError(f"expert {i}: scale {scale!r} must be a finite number")
        if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
            raise MethodError(f"expert {i}: A or B contains NaN or infinite values")
        compute = torch.float32 if a.dtype in (torch.float16, torch.bfloat16) else a.dtype
        work.append((a.detach().to(compute), b.detach().to(compute), float(scale)))
    return work
