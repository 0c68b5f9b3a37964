"""The field's merge methods (composition/methods): properties each method promises, equality
with a small dense reference written here from the published formula, and the low-rank core space."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from composition.methods import (
    GROUPS,
    SPACES,
    MethodError,
    RenamedParameterWarning,
    core_merge,
    get_method,
    list_methods,
    merge_deltas,
    split_space,
)
from composition.methods._common import sign_consensus_merge
from composition.methods.core_space import core_bases
from composition.methods.della import keep_probabilities

DENSE = [m.name for m in list_methods() if m.inputs == "deltas"]
CORE = [m.name for m in list_methods() if "core" in m.spaces]
RANDOM = {"dare_linear", "dare_ties", "della"}
# Hyper-parameters under which a method promises to give back one expert / K identical experts.
NEUTRAL = {"ties": {"density": 1.0}, "dare_linear": {"density": 1.0}, "dare_ties": {"density": 1.0},
           "magnitude_prune": {"density": 1.0}, "della": {"density": 1.0}, "breadcrumbs": {"density": 1.0}}
# Iso-C/CTS flatten the spectrum and TSV-M splits min(m,n) among the experts: no identity promise.
NO_IDENTITY = {"iso_c", "iso_cts"}
NO_IDENTICAL = {"iso_c", "iso_cts", "tsv_m"}
FAST = {"wudi": {"steps": 60}, "optmerge": {"steps": 60}}
# Adam normalises even rounding-sized gradients, so at a fixed point it may still step by up
# to lr per step: the Adam methods keep their identity promises to about lr, not to rounding.
ADAM_ATOL = {"wudi": 1e-5, "optmerge": 1e-5}


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _deltas(k=3, shape=(12, 9), seed=0):
    return [_randn(*shape, seed=seed + i) for i in range(k)]


def _hyper(name):
    return NEUTRAL.get(name, {}) | FAST.get(name, {})


def _factors(k=3, r=2, out=14, inp=11, seed=10, scales=(0.5, 2.0, 1.0, 0.25)):
    return [(_randn(r, inp, seed=seed + 2 * i), _randn(out, r, seed=seed + 2 * i + 1), scales[i % len(scales)]) for i in range(k)]


def _dense(factors):
    return [s * b @ a for a, b, s in factors]


def _product(result):
    a, b, s = result
    return s * b @ a


# ---------------------------------------------------------------- registry fields


def test_every_method_says_group_formula_and_spaces():
    names = [m.name for m in list_methods()]
    for expected in ("weight_average", "tsv_m", "iso_c", "iso_cts", "wudi", "optmerge", "aswudi", "magnitude_prune",
                     "della", "breadcrumbs", "sce", "factor_mean"):
        assert expected in names
    for m in list_methods():
        assert m.group in GROUPS and m.formula.strip() and m.spaces and set(m.spaces) <= set(SPACES)
    assert not get_method("factor_mean").exact and get_method("factor_mean").spaces == ("core",)
    assert "inexact" in get_method("factor_mean").label.lower()
    for name in ("ties", "dare_linear", "dare_ties"):  # the help says core-space masks are another operation
        assert "different operation" in get_method(name).help
    assert get_method("weight_average").linear and get_method("weight_average").linear_weights([1.0, 3.0]) == [0.25, 0.75]
    assert get_method("task_arithmetic").linear_weights([1.0, 3.0]) == [1.0, 3.0]
    with pytest.raises(MethodError, match="sum to 0"):
        get_method("weight_average").linear_weights([1.0, -1.0])


def test_split_space_names_the_column():
    assert split_space("ties") == ("ties", "dense")
    assert split_space("ties@core") == ("ties", "core")
    assert split_space("factor_mean") == ("factor_mean", "core")
    with pytest.raises(MethodError, match="unknown space 'sparse'"):
        split_space("ties@sparse")
    with pytest.raises(MethodError, match="runs only in core"):
        split_space("factor_mean@dense")
    with pytest.raises(MethodError, match="unknown merge method"):
        split_space("nope@core")


def test_drop_rate_still_works_with_a_note():
    deltas = _deltas(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = merge_deltas("dare_ties", deltas, [0.5, 0.5], seed=3, drop_rate=0.25)
    assert any(issubclass(w.category, RenamedParameterWarning) and "density = 1 − drop_rate" in str(w.message) for w in caught)
    torch.testing.assert_close(old, merge_deltas("dare_ties", deltas, [0.5, 0.5], seed=3, density=0.75))
    values, notes = get_method("dare_linear").resolve_hyper({"drop_rate": 0.2})
    assert values["density"] == pytest.approx(0.8) and len(notes) == 1
    with pytest.raises(MethodError, match="not both"):
        merge_deltas("dare_linear", deltas, [0.5, 0.5], drop_rate=0.2, density=0.8)


def test_drop_seed_zero_keeps_the_engine_seed_and_others_change_the_masks():
    deltas = _deltas(2, shape=(16, 16))
    for name in ("dare_linear", "della"):
        base = merge_deltas(name, deltas, [0.5, 0.5], seed=4)
        assert torch.equal(base, merge_deltas(name, deltas, [0.5, 0.5], seed=4, drop_seed=0))
        other = merge_deltas(name, deltas, [0.5, 0.5], seed=4, drop_seed=9)
        assert not torch.equal(base, other)
        assert torch.equal(other, merge_deltas(name, deltas, [0.5, 0.5], seed=4, drop_seed=9))


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("name", [n for n in DENSE if n not in NO_IDENTITY])
def test_one_expert_with_weight_one_gives_that_expert(name):
    deltas = _deltas(3)
    merged = merge_deltas(name, deltas, [1.0, 0.0, 0.0], **_hyper(name))
    torch.testing.assert_close(merged, deltas[0], rtol=1e-9, atol=ADAM_ATOL.get(name, 1e-9))


@pytest.mark.parametrize("name", [n for n in DENSE if n not in NO_IDENTICAL])
@pytest.mark.parametrize("k", [2, 4])
def test_identical_experts_merge_to_that_expert(name, k):
    delta = _randn(12, 9, seed=5)
    merged = merge_deltas(name, [delta.clone() for _ in range(k)], [1.0 / k] * k, **_hyper(name))
    torch.testing.assert_close(merged, delta, rtol=1e-9, atol=ADAM_ATOL.get(name, 1e-9))


@pytest.mark.parametrize("name", [n for n in DENSE if n not in RANDOM])
def test_expert_order_does_not_matter(name):
    deltas, weights = _deltas(3), [0.5, 0.2, 0.3]
    perm = [2, 0, 1]
    a = merge_deltas(name, deltas, weights, **FAST.get(name, {}))
    b = merge_deltas(name, [deltas[i] for i in perm], [weights[i] for i in perm], **FAST.get(name, {}))
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", DENSE)
def test_outputs_are_finite_and_seeded_ones_repeat(name):
    deltas, weights = _deltas(3), [0.4, 0.3, 0.3]
    a = merge_deltas(name, deltas, weights, seed=11, **FAST.get(name, {}))
    b = merge_deltas(name, deltas, weights, seed=11, **FAST.get(name, {}))
    assert bool(torch.isfinite(a).all()) and torch.equal(a, b) and a.shape == (12, 9)
    if name in RANDOM:
        assert not torch.equal(a, merge_deltas(name, deltas, weights, seed=12))


@pytest.mark.parametrize("name", ["tsv_m", "iso_c", "iso_cts", "wudi", "optmerge", "aswudi"])
def test_subspace_methods_refuse_a_non_matrix_delta(name):
    with pytest.raises(MethodError, match="2-D delta"):
        merge_deltas(name, [torch.ones(3, 4, 5)], [1.0])


# ---------------------------------------------------------------- references from the published formulas


def test_weight_average_is_the_normalized_mean():
    deltas = _deltas(3)
    w = [1.0, 2.0, 5.0]
    torch.testing.assert_close(merge_deltas("weight_average", deltas, w), sum(x * d for x, d in zip(w, deltas)) / 8.0)


@pytest.mark.parametrize("shape", [(12, 9), (12, 10)])
def test_tsv_m_equals_the_published_svd_merging(shape):
    # MLLMerging svd_merging: zero-padded concatenation of each task's top 1/N triplets, then u_u@v_u.
    deltas = _deltas(3, shape=shape)
    n = len(deltas)
    u0, s0, v0 = torch.linalg.svd(deltas[0], full_matrices=False)
    sum_u, sum_s, sum_v = torch.zeros_like(u0), torch.zeros_like(s0), torch.zeros_like(v0)
    for i, d in enumerate(deltas):
        u, s, v = torch.linalg.svd(d, full_matrices=False)
        k = int(s.shape[0] * (1.0 / n))
        sum_u[:, i * k:(i + 1) * k], sum_s[i * k:(i + 1) * k], sum_v[i * k:(i + 1) * k] = u[:, :k], s[:k], v[:k]
    uu, _, vu = torch.linalg.svd(sum_u, full_matrices=False)
    uv, _, vv = torch.linalg.svd(sum_v, full_matrices=False)
    expected = torch.linalg.multi_dot([uu, vu, torch.diag(sum_s), uv, vv])
    torch.testing.assert_close(merge_deltas("tsv_m", deltas, [1.0] * n), expected, rtol=1e-8, atol=1e-8)


def test_iso_c_equals_the_published_iso_merging():
    deltas = _deltas(3)
    u, s, v = torch.linalg.svd(sum(deltas), full_matrices=False)
    expected = u @ torch.diag(torch.full_like(s, float(s.mean()))) @ v
    torch.testing.assert_close(merge_deltas("iso_c", deltas, [1.0, 1.0, 1.0]), expected)
    # λ_i = α scales the result by α, the published scaling coefficient.
    torch.testing.assert_close(merge_deltas("iso_c", deltas, [0.3] * 3), 0.3 * expected)


def test_iso_cts_equals_the_reference():
    deltas, fraction = _deltas(3, shape=(14, 11)), 0.5
    full, n = 11, 3
    common = int(full * fraction)
    common = full - round((full - common) / n) * n
    u, s, v = torch.linalg.svd(sum(deltas), full_matrices=False)
    cu, cs, cv = u[:, :common], s[:common], v[:common]
    per = int((full - common) / n)
    U, S, V = torch.zeros(14, full, dtype=torch.float64), torch.zeros(full, dtype=torch.float64), torch.zeros(full, 11, dtype=torch.float64)
    for i, w in enumerate(deltas):
        ut, st, vt = torch.linalg.svd(w - cu @ cu.T @ w, full_matrices=False)
        U[:, i * per:(i + 1) * per], S[i * per:(i + 1) * per], V[i * per:(i + 1) * per] = ut[:, :per], st[:per], vt[:per]
    U[:, n * per:], S[n * per:], V[n * per:] = cu, cs, cv
    a, _, b = torch.linalg.svd(U, full_matrices=False)
    c, _, d = torch.linalg.svd(V, full_matrices=False)
    expected = (a @ b) @ torch.diag(torch.full_like(S, float(S.mean()))) @ (c @ d)
    torch.testing.assert_close(merge_deltas("iso_cts", deltas, [1.0] * 3, common_space_fraction=fraction), expected)


def _published_adam(vectors, targets, low_rank, steps, lr=1e-5):
    # The published loop: autograd, Adam from the sum, loss Σ ‖(θ − t_i)·P_iᵀ‖² / ‖τ_i‖².
    theta = torch.nn.Parameter(vectors.sum(0).clone())
    opt = torch.optim.Adam([theta], lr=lr)
    l2 = torch.norm(vectors.reshape(vectors.shape[0], -1), dim=-1).square()
    for _ in range(steps):
        inner = torch.matmul(theta.unsqueeze(0) - targets, low_rank.transpose(1, 2))
        loss = torch.sum(inner.square() / l2[:, None, None])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return theta.detach()


# (12, 9): each step multiplies by the (n, n) Gram of the projectors; (3, 20): by the stacked
# projectors themselves (fewer rows than n/2). Both must be the published loop.
@pytest.mark.parametrize("shape", [(12, 9), (3, 20)])
def test_wudi_equals_the_published_loop(shape):
    vectors = torch.stack(_deltas(3, shape=shape)) * 1e-3  # LoRA-sized entries, so lr 1e-5 moves them visibly
    expected = _published_adam(vectors, vectors, vectors, steps=40)
    merged = merge_deltas("wudi", list(vectors), [1.0] * 3, steps=40)
    torch.testing.assert_close(merged, expected, rtol=1e-7, atol=1e-10)
    assert (merged - vectors.sum(0)).abs().max() > 1e-5  # it moved


def test_optmerge_equals_the_published_wudi2():
    vectors = torch.stack(_deltas(3)) * 1e-3
    avg = vectors.mean(0)
    low, targets = [], []
    for v in vectors:
        _, s, vh = torch.linalg.svd(v, full_matrices=True)
        u2, s2, v2 = torch.linalg.svd(v - avg, full_matrices=False)
        k = int(s.shape[0] / vectors.shape[0])
        s = s * (torch.arange(s.numel()) < k)
        vh = vh * (torch.arange(vh.shape[0]) < k)[:, None]
        S = torch.zeros(v.shape, dtype=v.dtype)
        S[: min(v.shape), : min(v.shape)] = torch.diag(s)
        low.append(S @ vh)
        targets.append(u2[:, :k] @ torch.diag(s2[:k]) @ v2[:k] + avg)
    expected = _published_adam(vectors, torch.stack(targets), torch.stack(low), steps=40)
    merged = merge_deltas("optmerge", list(vectors), [1.0] * 3, steps=40)
    torch.testing.assert_close(merged, expected, rtol=1e-7, atol=1e-10)
    # steps=0 is the start θ₀ = Σ τ_i; the early-stopped iterate is not it.
    torch.testing.assert_close(merge_deltas("optmerge", list(vectors), [1.0] * 3, steps=0), vectors.sum(0))


def test_aswudi_equals_the_published_closed_form():
    v = torch.stack(_deltas(3, shape=(12, 9)))
    inv = 1.0 / v.reshape(3, -1).norm(dim=-1).square()
    B = torch.einsum("nab,nac->nbc", v, v)
    C = torch.einsum("n,nbc->bc", inv, B)
    D = torch.einsum("n,nac->ac", inv, torch.einsum("nab,nbc->nac", v, B))
    ev, V = torch.linalg.eigh(C)
    ev = ev.clamp(min=1e-8)
    y = ev.flip(0).sqrt()
    k = max(1, min(9, int(torch.ceil(y.sum() ** 2 / (y * y).sum()).item())))
    f = torch.zeros_like(ev)
    f[9 - k:] = 1.0
    theta0 = v.sum(0)
    expected = theta0 - (theta0 @ V * f) @ V.T + ((D @ V) * (f / ev)) @ V.T
    torch.testing.assert_close(merge_deltas("aswudi", list(v), [1.0] * 3), expected)


def test_magnitude_prune_equals_peft():
    deltas, w, density = _deltas(3), [0.5, 1.0, -0.5], 0.3
    expected = 0
    for wi, d in zip(w, deltas):
        k = int(density * d.numel())
        mask = torch.zeros(d.numel(), dtype=d.dtype)
        mask[torch.topk(d.abs().reshape(-1), k=k).indices] = 1
        expected = expected + wi * d * mask.reshape(d.shape)
    torch.testing.assert_close(merge_deltas("magnitude_prune", deltas, w, density=density), expected)


def test_breadcrumbs_equals_mergekit_magnitude_outliers():
    deltas, w, density, gamma = _deltas(2), [0.6, 0.4], 0.7, 0.05
    expected = 0
    for wi, d in zip(w, deltas):
        n = d.numel()
        target, n_top = int(density * n), int(gamma * n)
        n_bot = n - target - n_top
        idx = torch.sort(d.abs().reshape(-1)).indices
        mask = torch.zeros(n, dtype=d.dtype)
        mask[idx[n_bot:-n_top]] = 1
        expected = expected + wi * d * mask.reshape(d.shape)
    torch.testing.assert_close(merge_deltas("breadcrumbs", deltas, w, density=density, gamma=gamma), expected)


def test_della_is_ranked_drop_rescale_then_consensus():
    deltas, w = _deltas(3), [0.5, 0.3, 0.2]
    stack = torch.stack(deltas)
    probs = keep_probabilities(stack, 0.5, 0.2)
    # mergekit della_magprune: rank by magnitude per row, p = density − ε + 2ε·(rank − min)/(max − min).
    ranks = torch.argsort(stack.abs(), dim=-1).argsort(dim=-1).to(stack.dtype) + 1
    torch.testing.assert_close(probs, 0.3 + 0.4 * (ranks - 1) / (9 - 1))
    draws = torch.rand(stack.shape, generator=torch.Generator().manual_seed(6), dtype=stack.dtype)
    sparse = torch.where(draws < probs, stack / probs, torch.zeros_like(stack))
    expected = 1.5 * sign_consensus_merge(sparse, torch.tensor(w, dtype=stack.dtype))
    torch.testing.assert_close(merge_deltas("della", deltas, w, seed=6, density=0.5, epsilon=0.2, lambda_scale=1.5), expected)
    with pytest.raises(MethodError, match="outside \\(0, 1\\)"):
        merge_deltas("della", deltas, w, density=0.9, epsilon=0.2)


def test_sce_equals_mergekit_with_uniform_weights():
    stack = torch.stack(_deltas(3))
    var = torch.var(stack, dim=0, unbiased=False)
    k = int(0.5 * torch.count_nonzero(var))
    mask = torch.zeros_like(var)
    mask.view(-1)[torch.topk(var.abs().view(-1), k=k).indices] = 1
    d = stack * mask
    ws = torch.tensor([float((x ** 2).sum()) / x.numel() for x in d], dtype=d.dtype)
    ws = (ws / ws.sum()).view(-1, 1, 1)
    erase = d.sign() == ((d.sum(0) >= 0).to(d.dtype) * 2 - 1)
    divisor = (ws * erase).sum(0)
    divisor[divisor == 0] = 1
    expected = (d * ws * erase).sum(0) / divisor
    torch.testing.assert_close(merge_deltas("sce", list(stack), [1 / 3] * 3, select_topk=0.5), expected)


def test_factor_mean_is_the_scripts_mean_not_the_mean_of_deltas():
    f = _factors(2, scales=(0.5, 0.5))
    a, b, s = core_merge("factor_mean", f, [0.5, 0.5])
    expected = 0.5 * ((f[0][1] + f[1][1]) / 2) @ ((f[0][0] + f[1][0]) / 2)
    torch.testing.assert_close(s * b @ a, expected)
    mean = sum(_dense(f)) / 2
    assert (s * b @ a - mean).abs().max() > 0.1 * mean.abs().max()
    with pytest.raises(MethodError, match="factors, not their deltas"):
        merge_deltas("factor_mean", _dense(f), [0.5, 0.5])
    with pytest.raises(MethodError, match="one rank"):
        core_merge("factor_mean", [f[0], (_randn(3, 11), _randn(14, 3), 1.0)], [0.5, 0.5])


# ---------------------------------------------------------------- core space


def test_core_task_arithmetic_equals_dense_exactly():
    f = _factors(4, r=3)
    w = [0.4, -0.7, 1.3, 0.25]
    core = _product(core_merge("task_arithmetic", f, w))
    dense = merge_deltas("task_arithmetic", _dense(f), w)
    torch.testing.assert_close(core, dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(_product(core_merge("weight_average", f, w)), dense / sum(w), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", CORE)
def test_core_results_have_rank_at_most_k_r(name):
    k, r = 3, 2
    f = _factors(k, r=r)
    a, b, s = core_merge(name, f, [0.5, 0.3, 0.2], FAST.get(name, {}), seed=1)
    assert a.shape[0] == b.shape[1] <= k * r and a.shape[1] == 11 and b.shape[0] == 14
    assert int(torch.linalg.matrix_rank(s * b @ a)) <= k * r
    assert bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())


@pytest.mark.parametrize("name", [n for n in CORE if n not in NO_IDENTITY])
def test_core_one_expert_with_weight_one_gives_that_expert(name):
    f = _factors(3)
    got = _product(core_merge(name, f, [1.0, 0.0, 0.0], _hyper(name)))
    torch.testing.assert_close(got, _dense(f)[0], rtol=1e-9, atol=ADAM_ATOL.get(name, 1e-9))


@pytest.mark.parametrize("name", [n for n in CORE if n not in NO_IDENTICAL])
def test_core_identical_experts_give_that_expert_at_rank_r(name):
    one = _factors(1, r=2)[0]
    a, b, s = core_merge(name, [one] * 3, [1 / 3] * 3, _hyper(name))
    torch.testing.assert_close(s * b @ a, _dense([one])[0], rtol=1e-9, atol=ADAM_ATOL.get(name, 1e-9))
    assert a.shape[0] == 2  # the span of identical experts is one expert's


@pytest.mark.parametrize("name", ["ties", "magnitude_prune", "sce", "iso_c", "tsv_m"])
def test_core_bases_make_core_results_independent_of_expert_order(name):
    f, w = _factors(3), [0.5, 0.2, 0.3]
    perm = [1, 2, 0]
    a = _product(core_merge(name, f, w))
    b = _product(core_merge(name, [f[i] for i in perm], [w[i] for i in perm]))
    torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_core_ties_is_a_different_operation_from_dense_ties():
    f, w = _factors(3), [0.4, 0.3, 0.3]
    core = _product(core_merge("ties", f, w, {"density": 0.5}))
    dense = merge_deltas("ties", _dense(f), w, density=0.5)
    assert (core - dense).abs().max() > 1e-3 * dense.abs().max()
    # …but a rank-≤K·r delta that lives in the experts' span.
    u, v = core_bases(f)
    torch.testing.assert_close(u @ (u.T @ core @ v) @ v.T, core, rtol=1e-9, atol=1e-9)


def test_core_merge_keeps_half_dtypes_and_refuses_bad_factors():
    f = [(a.to(torch.bfloat16), b.to(torch.bfloat16), s) for a, b, s in _factors(2)]
    a, b, _ = core_merge("ties", f, [0.5, 0.5])
    assert a.dtype == b.dtype == torch.bfloat16
    with pytest.raises(MethodError, match="A's rows must equal B's columns"):
        core_merge("ties", [(_randn(2, 11), _randn(14, 3), 1.0)], [1.0])
    with pytest.raises(MethodError, match="differs from expert 0"):
        core_merge("ties", [(_randn(2, 11), _randn(14, 2), 1.0), (_randn(2, 10), _randn(14, 2), 1.0)], [1.0, 1.0])
    with pytest.raises(MethodError, match="NaN or infinite"):
        core_merge("ties", [(torch.full((2, 11), math.nan, dtype=torch.float64), _randn(14, 2), 1.0)], [1.0])
    with pytest.raises(MethodError, match="2 weights for 1 experts"):
        core_merge("ties", [_factors(1)[0]], [1.0, 1.0])


# ---------------------------------------------------------------- the CLI listing


def test_methods_command_lists_the_registry_as_json(capsys):
    from composition.cli import main

    assert main(["methods", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    by_name = {m["name"]: m for m in listing["methods"]}
    assert list(by_name) == [m.name for m in list_methods()]
    assert by_name["ties"]["spaces"] == ["dense", "core"] and by_name["factor_mean"]["spaces"] == ["core"]
    assert by_name["optmerge"]["group"] == "subspace" and by_name["optmerge"]["formula"]
    assert {"name": "steps", "default": 300, "minimum": 0, "maximum": 2000} .items() <= by_name["optmerge"]["params"][0].items()
    assert by_name["dare_linear"]["renamed"] == [{"old": "drop_rate", "new": "density", "rule": "density = 1 − drop_rate"}]
    assert listing["groups"] == GROUPS


def test_methods_command_text(capsys):
    from composition.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for heading in GROUPS.values():
        assert heading in out
    assert "optmerge" in out and "dense, core" in out and "inexact" in out
