"""Tests of the merge-method registry (composition/methods): math properties, validation,
and equality with peft's exact LoRA merge (``combination_type="cat"``)."""
from __future__ import annotations

import pytest
import torch

from composition.errors import CompositionError
from composition.methods import (
    HyperParam,
    MergeMethod,
    MethodError,
    get_method,
    list_methods,
    merge_deltas,
    register_method,
)
from composition.methods._common import sign_consensus_merge
from composition.methods.dare import drop_and_rescale
from composition.methods.ties import kept_count, trim_by_magnitude

# The four methods this file covers (tests/test_methods_field.py covers the rest of the registry).
ALL = ["task_arithmetic", "ties", "dare_linear", "dare_ties"]
# Hyper-parameters under which every method must reduce to a (weighted) mean/sum.
NEUTRAL = {"task_arithmetic": {}, "ties": {"density": 1.0}, "dare_linear": {"density": 1.0}, "dare_ties": {"density": 1.0}}


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _deltas(k: int = 3, shape: tuple[int, ...] = (6, 5), seed: int = 0) -> list[torch.Tensor]:
    return [_randn(*shape, seed=seed + i) for i in range(k)]


# ---------------------------------------------------------------- registry


def test_registry_lists_the_methods_in_order():
    assert ALL == ["task_arithmetic", "ties", "dare_linear", "dare_ties"]
    assert [m.name for m in list_methods()][:4] == ALL  # a fresh list each time, same order
    assert get_method("task_arithmetic").linear
    assert not any(get_method(n).linear for n in ("ties", "dare_linear", "dare_ties"))
    for method in list_methods():
        assert isinstance(method, MergeMethod) and method.label and method.help
    assert get_method("dare_linear").defaults() == {"density": 0.5, "rescale": 1, "drop_seed": 0}
    assert isinstance(get_method("dare_linear").defaults()["rescale"], int)


def test_unknown_method_names_value_and_lists_registered():
    with pytest.raises(MethodError, match=r"'avg'.*task_arithmetic, ties, dare_linear, dare_ties"):
        get_method("avg")
    assert issubclass(MethodError, CompositionError)


def test_duplicate_registration_is_refused():
    with pytest.raises(MethodError, match="already registered"):
        register_method("ties", label="x", help="x")(lambda d, w, *, generator: d[0])
    assert ALL == [m.name for m in list_methods()][:4]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(default=2.0, minimum=0.0, maximum=1.0), "minimum <= default <= maximum"),
        (dict(default=0.5, minimum=0.0, maximum=1.0, step=0.0), "step must be > 0"),
        (dict(default=0.5, minimum=0.0, maximum=1.0, kind="int"), "must be integral"),
        (dict(default=0.5, minimum=0.0, maximum=1.0, kind="bool"), "kind must be"),
    ],
)
def test_hyperparam_validates_itself(kwargs, match):
    fields = dict(name="p", step=0.1, help="a parameter") | kwargs
    with pytest.raises(MethodError, match=match):
        HyperParam(**fields)


# ---------------------------------------------------------------- task arithmetic


def test_task_arithmetic_is_the_weighted_sum():
    deltas = _deltas(3)
    weights = [0.5, -1.25, 2.0]
    expected = 0.5 * deltas[0] - 1.25 * deltas[1] + 2.0 * deltas[2]
    torch.testing.assert_close(merge_deltas("task_arithmetic", deltas, weights), expected)


@pytest.mark.parametrize("name", ALL)
def test_weights_one_zero_give_the_first_expert(name):
    deltas = _deltas(3)
    merged = merge_deltas(name, deltas, [1.0, 0.0, 0.0], **NEUTRAL[name])
    torch.testing.assert_close(merged, deltas[0])


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("k", [1, 2, 4])
def test_merging_identical_experts_gives_that_expert(name, k):
    delta = _randn(7, 3)
    merged = merge_deltas(name, [delta.clone() for _ in range(k)], [1.0 / k] * k, **NEUTRAL[name])
    torch.testing.assert_close(merged, delta)


# ---------------------------------------------------------------- equality with peft


@pytest.fixture(scope="module")
def peft_model():
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=100,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    targets = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    # Different ranks and alphas, so the scaling alpha/r differs per adapter.
    shapes = {"x1": (4, 8), "x2": (4, 4), "x3": (2, 6)}
    lora = lambda r, alpha: peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0)
    model = peft.get_peft_model(model, lora(*shapes["x1"]), adapter_name="x1")
    for name in ("x2", "x3"):
        model.add_adapter(name, lora(*shapes[name]))
    # lora_B starts at zero: randomize both factors so every delta is nonzero and distinct.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in _lora_layers(model):
            for name in shapes:
                for factor in (module.lora_A[name].weight, module.lora_B[name].weight):
                    factor.copy_(torch.randn(factor.shape, generator=generator))
    return model


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 2 * 5
    return layers


def test_task_arithmetic_equals_peft_cat_merge(peft_model):
    adapters, weights = ["x1", "x2", "x3"], [0.5, 0.3, -0.7]
    peft_model.add_weighted_adapter(adapters, weights, adapter_name="merged_cat", combination_type="cat")
    for module in _lora_layers(peft_model):
        deltas = [module.get_delta_weight(a) for a in adapters]
        ours = merge_deltas("task_arithmetic", deltas, weights)
        torch.testing.assert_close(ours, module.get_delta_weight("merged_cat"), rtol=1e-5, atol=1e-5)


def test_peft_linear_merge_is_not_the_mean_of_the_deltas(peft_model):
    # peft's "linear" averages the A and B factors separately (needs equal ranks): the
    # product has cross terms B_i·A_j, so it is not the mean of the deltas — which is why
    # the engine merges the deltas themselves (DESIGN.md §1).
    adapters, weights = ["x1", "x2"], [0.5, 0.5]
    peft_model.add_weighted_adapter(adapters, weights, adapter_name="merged_linear", combination_type="linear")
    for module in _lora_layers(peft_model):
        mean = merge_deltas("task_arithmetic", [module.get_delta_weight(a) for a in adapters], weights)
        factor_mean = module.get_delta_weight("merged_linear")
        assert (factor_mean - mean).abs().max() > 0.1 * mean.abs().max()


# ---------------------------------------------------------------- TIES


@pytest.mark.parametrize("density", [0.0, 0.1, 0.25, 0.5, 0.73, 1.0])
def test_ties_trim_keeps_exactly_round_density_numel(density):
    deltas = torch.stack(_deltas(3, shape=(10, 7)))
    trimmed = trim_by_magnitude(deltas, density)
    k = kept_count(density, 70)
    assert k == int(density * 70 + 0.5)
    for original, kept in zip(deltas, trimmed):
        assert int((kept != 0).sum()) == k
        # The kept entries are the largest by magnitude, unchanged.
        mask = kept != 0
        torch.testing.assert_close(kept[mask], original[mask])
        if 0 < k < 70:
            assert original[mask].abs().min() >= original[~mask].abs().max()


def test_ties_trim_breaks_magnitude_ties_by_lowest_index():
    deltas = torch.tensor([[1.0, -1.0, 1.0, -1.0, 0.5, 2.0]])
    trimmed = trim_by_magnitude(deltas, 0.5)  # k = 3: 2.0, then the first two of the four 1s
    assert trimmed.tolist() == [[1.0, -1.0, 0.0, 0.0, 0.0, 2.0]]


def test_ties_hand_worked_example():
    # density 0.6 of 5 entries: each delta keeps its 3 largest magnitudes.
    d1 = torch.tensor([4.0, -1.0, 2.0, 0.5, 3.0])  # keeps [4, 0, 2, 0, 3]
    d2 = torch.tensor([2.0, -4.0, 1.0, -2.0, -0.5])  # keeps [2, -4, 0, -2, 0]
    d3 = torch.tensor([1.0, 3.0, -5.0, 0.1, -2.0])  # keeps [0, 3, -5, 0, -2]
    weights = [1.0, 1.0, 2.0]
    # weighted: [4,0,2,0,3] + [2,-4,0,-2,0] + [0,6,-10,0,-4]; mass [6,2,-8,-2,-1] -> signs [+,+,-,-,-]
    # entry 0: d1, d2 agree -> (4+2)/(1+1) = 3
    # entry 1: d3 agrees (d2 is -) -> 6/2 = 3
    # entry 2: d3 agrees (d1 is +) -> -10/2 = -5
    # entry 3: d2 alone -> -2/1 = -2
    # entry 4: d3 agrees (d1 is +) -> -4/2 = -2
    merged = merge_deltas("ties", [d1, d2, d3], weights, density=0.6)
    assert merged.tolist() == [3.0, 3.0, -5.0, -2.0, -2.0]


def test_ties_output_has_the_elected_sign():
    deltas, weights = _deltas(4, shape=(20, 9)), [0.4, 1.0, -0.3, 0.7]
    trimmed = trim_by_magnitude(torch.stack(deltas), 0.4)
    elected = torch.sign((trimmed * torch.tensor(weights).view(-1, 1, 1)).sum(0))
    merged = merge_deltas("ties", deltas, weights, density=0.4)
    nonzero = merged != 0
    assert nonzero.any()
    assert torch.equal(torch.sign(merged[nonzero]), elected[nonzero])


def test_ties_is_zero_where_nothing_is_kept_or_mass_cancels():
    d1 = torch.tensor([1.0, 0.0, 5.0])
    d2 = torch.tensor([-1.0, 0.0, 6.0])
    merged = merge_deltas("ties", [d1, d2], [1.0, 1.0], density=1.0)
    # entry 0: masses cancel exactly, no sign wins -> 0; entry 1: all zero -> 0
    assert merged.tolist() == [0.0, 0.0, 5.5]
    assert merge_deltas("ties", [d1, d2], [1.0, 1.0], density=0.0).tolist() == [0.0, 0.0, 0.0]


def test_ties_density_one_same_signs_is_the_weighted_mean():
    base = _randn(8, 6).abs() + 0.1
    signs = torch.sign(_randn(8, 6, seed=9))
    deltas = [base * signs * s for s in (1.0, 2.0, 0.5)]  # all share the sign pattern
    weights = [0.2, 0.5, 0.3]
    merged = merge_deltas("ties", deltas, weights, density=1.0)
    weighted_mean = sum(w * d for w, d in zip(weights, deltas)) / sum(weights)
    torch.testing.assert_close(merged, weighted_mean)
    # weights summing to one: TIES equals task arithmetic (NaiveMC) when nothing conflicts
    torch.testing.assert_close(merged, merge_deltas("task_arithmetic", deltas, weights))


# ---------------------------------------------------------------- DARE


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
def test_dare_is_deterministic_per_seed(name):
    deltas = _deltas(3, shape=(16, 16))
    a = merge_deltas(name, deltas, [0.3, 0.3, 0.4], seed=7, density=0.4)
    b = merge_deltas(name, deltas, [0.3, 0.3, 0.4], seed=7, density=0.4)
    c = merge_deltas(name, deltas, [0.3, 0.3, 0.4], seed=8, density=0.4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_dare_does_not_touch_the_global_rng():
    state = torch.get_rng_state()
    merge_deltas("dare_linear", _deltas(2), [0.5, 0.5], seed=3)
    assert torch.equal(state, torch.get_rng_state())


def test_dare_keeps_about_one_minus_drop_rate():
    delta = torch.ones(200, 500)  # 100k entries: the kept fraction's std is ~0.0016
    for drop_rate in (0.1, 0.5, 0.9):
        merged = merge_deltas("dare_linear", [delta], [1.0], seed=1, density=1 - drop_rate, rescale=0)
        kept = float((merged != 0).float().mean())
        assert abs(kept - (1 - drop_rate)) < 0.01
        assert set(merged.unique().tolist()) <= {0.0, 1.0}
        rescaled = merge_deltas("dare_linear", [delta], [1.0], seed=1, density=1 - drop_rate)
        torch.testing.assert_close(rescaled, merged / (1 - drop_rate))


def test_dare_rescale_preserves_the_expected_sum():
    deltas, weights = _deltas(2, shape=(4, 5)), [0.7, 0.3]
    runs = torch.stack([merge_deltas("dare_linear", deltas, weights, seed=s, density=0.5) for s in range(4000)])
    expected = merge_deltas("task_arithmetic", deltas, weights)
    # Each entry averages 4000 draws: std of the mean < 0.05·max|delta|, test at ~5 std.
    torch.testing.assert_close(runs.mean(0), expected, atol=0.1, rtol=0.0)


def test_dare_with_no_drop_reduces_exactly():
    deltas, weights = _deltas(3), [0.2, 0.5, 0.3]
    for rescale in (0, 1):
        assert torch.equal(
            merge_deltas("dare_linear", deltas, weights, density=1.0, rescale=rescale),
            merge_deltas("task_arithmetic", deltas, weights),
        )
        assert torch.equal(
            merge_deltas("dare_ties", deltas, weights, density=1.0, rescale=rescale),
            merge_deltas("ties", deltas, weights, density=1.0),
        )


def test_dare_ties_is_drop_then_sign_consensus():
    deltas, weights = _deltas(3, shape=(10, 10)), [0.5, 0.2, -0.3]
    merged = merge_deltas("dare_ties", deltas, weights, seed=5, density=0.7)
    # Same seed on the same device: the same masks, drawn from a local generator.
    dropped = drop_and_rescale(torch.stack(deltas), 0.7, 1, torch.Generator().manual_seed(5))
    assert int((dropped == 0).sum()) > 0
    torch.testing.assert_close(merged, sign_consensus_merge(dropped, torch.tensor(weights)))
    elected = torch.sign((dropped * torch.tensor(weights).view(-1, 1, 1)).sum(0))
    nonzero = merged != 0
    assert nonzero.any()
    assert torch.equal(torch.sign(merged[nonzero]), elected[nonzero])


# ---------------------------------------------------------------- dtypes, copies, errors


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_result_keeps_dtype_and_shape(name, dtype):
    deltas = [d.to(dtype) for d in _deltas(2, shape=(3, 4, 5))]
    merged = merge_deltas(name, deltas, [0.5, 0.5])
    assert merged.dtype == dtype and merged.shape == (3, 4, 5)


def test_half_inputs_are_merged_in_float32():
    deltas = [_randn(50, seed=i, dtype=torch.float16) for i in range(3)]
    weights = [0.3, 0.3, 0.4]
    exact = sum(w * d.float() for w, d in zip(weights, deltas)).half()
    assert torch.equal(merge_deltas("task_arithmetic", deltas, weights), exact)


@pytest.mark.parametrize("name", ALL)
def test_inputs_are_never_mutated(name):
    deltas = _deltas(3)
    copies = [d.clone() for d in deltas]
    weights = [0.2, 0.3, 0.5]
    merged = merge_deltas(name, deltas, weights)
    for d, c in zip(deltas, copies):
        assert torch.equal(d, c)
    assert all(merged.data_ptr() != d.data_ptr() for d in deltas)
    # a single delta with weight 1 still comes back as a new tensor
    one = merge_deltas(name, deltas[:1], [1.0], **NEUTRAL[name])
    assert one.data_ptr() != deltas[0].data_ptr()


@pytest.mark.parametrize(
    "deltas, weights, hyper, match",
    [
        ([], [], {}, "at least one delta"),
        (torch.zeros(2, 3), [1.0, 1.0], {}, "list of tensors"),
        ([torch.zeros(2, 3), torch.zeros(3, 2)], [1, 1], {}, r"shape \(3, 2\) but delta 0 has shape \(2, 3\)"),
        ([torch.zeros(2), torch.zeros(2, dtype=torch.float64)], [1, 1], {}, "dtype"),
        ([torch.zeros(2, dtype=torch.int64)], [1], {}, "floating-point"),
        ([torch.tensor([1.0, float("nan")])], [1], {}, "NaN or infinite"),
        ([torch.zeros(2), torch.zeros(2)], [1.0], {}, "got 1 weights for 2 deltas"),
        ([torch.zeros(2)], [float("inf")], {}, "weight 0 is inf"),
        ([torch.zeros(2)], ["1"], {}, "finite numbers"),
        ([torch.zeros(2)], [1.0], {"dens": 0.5}, r"no hyper-parameter 'dens'; accepted: density"),
        ([torch.zeros(2)], [1.0], {"density": 1.5}, r"density=1.5 is outside the accepted range \[0.0, 1.0\]"),
        ([torch.zeros(2)], [1.0], {"density": float("nan")}, "finite number"),
    ],
)
def test_bad_inputs_are_refused_with_clear_messages(deltas, weights, hyper, match):
    with pytest.raises(MethodError, match=match):
        merge_deltas("ties", deltas, weights, **hyper)


def test_bad_hyper_for_methods_without_or_with_int_params():
    with pytest.raises(MethodError, match="accepted: none"):
        merge_deltas("task_arithmetic", [torch.zeros(2)], [1.0], density=0.5)
    with pytest.raises(MethodError, match="must be an integer"):
        merge_deltas("dare_linear", [torch.zeros(2)], [1.0], rescale=0.5)
    # The old name keeps working (density = 1 − drop_rate), checked against its old range.
    with pytest.raises(MethodError, match=r"drop_rate=1.0 is outside the accepted range \[0.0, 0.99\]"):
        merge_deltas("dare_linear", [torch.zeros(2)], [1.0], drop_rate=1.0)
    with pytest.raises(MethodError, match=r"density=0.0 is outside the accepted range \[0.01, 1.0\]"):
        merge_deltas("dare_linear", [torch.zeros(2)], [1.0], density=0.0)
    with pytest.raises(MethodError, match="seed"):
        merge_deltas("dare_linear", [torch.zeros(2)], [1.0], seed=-1)


def test_non_finite_result_is_refused():
    big = torch.full((4,), 60000.0, dtype=torch.float16)  # float16 max is 65504
    with pytest.raises(MethodError, match="non-finite"):
        merge_deltas("task_arithmetic", [big, big], [1.0, 1.0])
