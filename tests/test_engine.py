"""Properties of the composition math on tiny random models (DESIGN.md §1)."""
from __future__ import annotations

import pytest
import torch

from composition.composer import ComposedModel
from composition.inputs import ModalInput
from composition.errors import CompositionError
from composition.generate import GenerationConfig
from composition.variants import Coefficients
from composition.random_models import features_as_data, random_expert, random_features, tiny_base

QUESTION = "What do these inputs have in common?"


def make(kinds=("decoupled",), modalities=("image", "audio", "point"), identical=False):
    base = tiny_base()
    experts = []
    for kind in kinds:
        for i, m in enumerate(modalities):
            seed = 100 if identical else 100 + 10 * i + (0 if kind == "decoupled" else 1)
            suffix = "" if kind == "decoupled" else "-shared"
            experts.append(random_expert(base, f"{m}{suffix}", m, kind, seed))
    return ComposedModel(base, experts, feature_fn=features_as_data)


def inputs_for(*modalities, n=5):
    return [ModalInput(m, random_features(n + i, seed=i), f"{m}.bin") for i, m in enumerate(modalities)]


def test_damc_with_lambda_one_hot_equals_that_expert_on_text():
    cm = make()
    coef = Coefficients(lambdas={"image": 1.0, "audio": 0.0, "point": 0.0})
    damc = cm.logits(QUESTION, [], ["DAMC"], coef)[0]
    single = cm.logits(QUESTION, [], ["expert:image"])[0]
    assert torch.allclose(damc, single, atol=1e-6)
    # ... and differs from another expert, so the test can fail.
    assert not torch.allclose(damc, cm.logits(QUESTION, [], ["expert:audio"])[0], atol=1e-3)


def test_damc_with_one_input_equals_its_expert_including_modality_tokens():
    cm = make()
    inputs = inputs_for("audio")
    damc = cm.logits(QUESTION, inputs, ["DAMC"])[0]  # K=1: λ=1, μ=1
    single = cm.logits(QUESTION, inputs, ["expert:audio"])[0]
    assert torch.allclose(damc, single, atol=1e-6)


def test_naivemc_of_identical_experts_equals_that_expert():
    cm = make(kinds=("shared",), identical=True)
    naive = cm.logits(QUESTION, [], ["NaiveMC"])[0]
    single = cm.logits(QUESTION, [], ["expert:image-shared"])[0]
    assert (naive - single).abs().max() <= 1e-4  # fp32 rounding of 3 x (1/3)


def test_naivemc_is_the_mean_of_the_deltas_not_of_the_factors():
    cm = make(kinds=("shared",))
    layer_name, layer = next(iter(cm.layers.items()))
    experts = list(cm.experts.values())
    # The engine's materialized NaiveMC weight is W + mean_i(s_i B_i A_i) exactly.
    w0 = layer.weight.detach().clone()
    cm.materialize("NaiveMC")
    mean_delta = sum(e.deltas["shared"].dense(layer_name) for e in experts) / len(experts)
    assert torch.allclose(layer.weight - w0, mean_delta, atol=1e-5)
    factor_mean = experts[0].deltas["shared"].scale * (
        sum(e.deltas["shared"].B[layer_name] for e in experts) / 3) @ (sum(e.deltas["shared"].A[layer_name] for e in experts) / 3)
    assert not torch.allclose(mean_delta, factor_mean, atol=1e-3)
    cm.dematerialize()
    assert torch.equal(layer.weight, w0)


@pytest.mark.parametrize("variant", ["DAMC", "NaiveMC", "expert:image", "ties", "dare_linear"])
def test_online_equals_materialized(variant):
    cm = make(kinds=("decoupled", "shared"))
    inputs = inputs_for("image", "audio", "point")
    coef = Coefficients(lambdas={"image": 0.5, "audio": 0.3, "point": 0.4}, mus={"audio": 0.7})
    online = cm.logits(QUESTION, inputs, [variant], coef)[0]
    cm.materialize(variant, coef, {"image", "audio", "point"})
    materialized = cm.logits(QUESTION, inputs, [variant], coef)[0]
    # Other variants stay correct while one is materialized.
    other = cm.logits(QUESTION, inputs, ["expert:audio"])[0]
    cm.dematerialize()
    assert (online - materialized).abs().max() <= 1e-5
    # They pay one extra rounding: their deltas are applied relative to the written merge.
    assert (other - cm.logits(QUESTION, inputs, ["expert:audio"])[0]).abs().max() <= 1e-4


def test_batched_rows_equal_one_by_one():
    cm = make(kinds=("decoupled", "shared"))
    inputs = inputs_for("image", "audio", "point")
    variants = ["NaiveMC", "DAMC", "expert:image", "expert:audio", "expert:point", "ties"]
    batched = cm.logits(QUESTION, inputs, variants)
    lengths = {x.shape[0] for x in batched}
    assert len(lengths) > 1, "rows must have different prompt lengths for this test to mean anything"
    for name, logits in zip(variants, batched):
        alone = cm.logits(QUESTION, inputs, [name])[0]
        assert (logits - alone).abs().max() <= 1e-4, name
    config = GenerationConfig(max_new_tokens=8)
    together = cm.compare(QUESTION, inputs, variants, config=config)
    separate = cm.compare(QUESTION, inputs, variants, config=config, batched=False)
    assert [a.token_ids for a in together] == [a.token_ids for a in separate]
    assert all(a.new_tokens == len(a.token_ids) for a in together)
    assert len({a.seconds for a in together}) == 1  # one batch -> one wall time


def test_variants_differ_and_coefficients_change_answers():
    cm = make()
    inputs = inputs_for("image", "audio")
    a = cm.logits(QUESTION, inputs, ["DAMC"], Coefficients(mus={"image": 1.0}))[0]
    b = cm.logits(QUESTION, inputs, ["DAMC"], Coefficients(mus={"image": 0.2}))[0]
    assert not torch.allclose(a, b, atol=1e-4)


def test_default_variants_and_missing_input_notes():
    cm = make(kinds=("decoupled", "shared"))
    assert cm.default_variants({"image", "audio"}) == ["NaiveMC", "DAMC", "expert:image", "expert:image-shared",
                                                        "expert:audio", "expert:audio-shared"]
    answers = cm.compare(QUESTION, inputs_for("image"), ["DAMC", "expert:audio"], config=GenerationConfig(max_new_tokens=2))
    assert answers[1].notes == ["the audio expert got no audio input"]


def test_input_without_expert_is_a_clear_error():
    cm = make(modalities=("image", "audio"))
    with pytest.raises(CompositionError, match="no expert for the point input"):
        cm.compare(QUESTION, inputs_for("image", "point"), ["DAMC"])
    with pytest.raises(CompositionError, match="NaiveMC merges experts trained with shared deltas"):
        cm.compare(QUESTION, [], ["NaiveMC"])
    with pytest.raises(CompositionError, match="unknown variant 'FancyMC'"):
        cm.compare(QUESTION, [], ["FancyMC"])
    with pytest.raises(CompositionError, match="λ for 'image'"):
        Coefficients(lambdas={"image": float("nan")})


def test_several_inputs_of_one_modality():
    cm = make()
    inputs = inputs_for("image") + [ModalInput("image", random_features(3, seed=9), "second.bin")]
    rows = cm.prompt_rows(QUESTION, inputs, cm.resolve(["DAMC"], Coefficients(), {"image"}))
    assert rows[0].routes.count("image") == (2 + 5 + 1) + (2 + 3 + 1)
    assert rows[0].text.count("image: <image>") == 2


def test_sampling_is_seeded():
    cm = make()
    config = GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=3)
    first = cm.compare(QUESTION, [], ["DAMC"], config=config)[0].token_ids
    assert first == cm.compare(QUESTION, [], ["DAMC"], config=config)[0].token_ids


@pytest.mark.parametrize("variant", ["DAMC", "NaiveMC", "ties"])
def test_exported_checkpoint_reloads_to_the_same_logits(tmp_path, variant):
    from transformers import AutoModelForCausalLM

    from composition.export import export_composition, load_exported

    cm = make(kinds=("decoupled", "shared"))
    inputs = inputs_for("image", "audio", "point")
    coef = Coefficients(lambdas={"image": 0.5, "audio": 0.3, "point": 0.4}, mus={"audio": 0.7})
    expected = cm.logits(QUESTION, inputs, [variant], coef)[0]
    export_composition(cm, variant, tmp_path / "out", coefficients=coef)
    reloaded, name = load_exported(tmp_path / "out", feature_fn=features_as_data)
    got = reloaded.logits(QUESTION, inputs, [name])[0]
    assert (got - expected).abs().max() <= 1e-4
    # The folder is a plain transformers checkpoint: text-only it is the variant's text path.
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    text_only = cm.logits(QUESTION, [], [variant], coef)[0]
    ids = cm.base.tokenizer(cm.base.template.format_prompt(QUESTION), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (plain(ids).logits[0] - text_only).abs().max() <= 1e-4


def test_export_refuses_a_non_empty_folder(tmp_path):
    from composition.export import export_composition

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(CompositionError, match="not empty"):
        export_composition(make(), "DAMC", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_subset_view_composes_only_the_selection_and_shares_the_model():
    cm = make()
    view = cm.subset(["image", "audio"])
    assert sorted(view.experts) == ["audio", "image"] and sorted(cm.experts) == ["audio", "image", "point"]
    assert view.layers is cm.layers and view.lock is cm.lock
    # DAMC over the subset with no inputs merges 2 experts (λ = 1/2), not 3.
    two = view.logits(QUESTION, [], ["DAMC"])[0]
    explicit = cm.logits(QUESTION, [], ["DAMC"], Coefficients(lambdas={"image": 0.5, "audio": 0.5, "point": 0.0}))[0]
    assert (two - explicit).abs().max() <= 1e-5
    with pytest.raises(CompositionError, match="'smell' is not loaded"):
        cm.subset(["smell"])


def test_many_dense_methods_in_one_request_keep_their_results():
    # More non-linear methods than the dense cache holds: none may be evicted mid-request.
    cm = make()
    variants = ["ties", "dare_linear", "dare_ties"]
    together = cm.logits(QUESTION, [], variants)
    for name, logits in zip(variants, together):
        assert (logits - cm.logits(QUESTION, [], [name])[0]).abs().max() <= 1e-4, name
    base_only = cm.logits(QUESTION, [], ["DAMC"], Coefficients(lambdas={"image": 0.0, "audio": 0.0, "point": 0.0}))[0]
    assert all(not torch.allclose(x, base_only, atol=1e-3) for x in together)


def test_the_vocabulary_projection_reads_a_contiguous_input():
    """``logits_to_keep=1`` slices a strided ``(B, 1, H)`` out of the hidden states, which ``F.linear`` turns
    into one read of the vocabulary projection per row; the engine's hook hands it a contiguous copy."""
    from composition.generate import contiguous_head_input

    cm = make()
    head = cm.model.get_output_embeddings()
    hooks = len(head._forward_pre_hooks)
    contiguous_head_input(cm.model)  # a second call adds nothing
    assert len(head._forward_pre_hooks) == hooks == 1
    seen = []
    handle = head.register_forward_pre_hook(lambda _m, args: seen.append((tuple(args[0].shape), args[0].is_contiguous())))
    try:
        cm.compare(QUESTION, inputs_for("image", "audio"), ["DAMC", "expert:image", "expert:audio"],
                   config=GenerationConfig(max_new_tokens=2))
    finally:
        handle.remove()
    prefill_shape = seen[0][0]
    assert prefill_shape[0] > 1 and prefill_shape[1] == 1  # several rows, the last position only
    assert all(contiguous for _, contiguous in seen), seen


def test_bucketed_prefill_equals_one_padded_pass():
    from composition.generate import length_buckets, prefill, prefill_logits

    cm = make(kinds=("decoupled", "shared"))
    inputs = [ModalInput(m, random_features(n, seed=i), f"{m}.bin") for i, (m, n) in enumerate((("image", 40), ("audio", 3), ("point", 12)))]
    variants = ["DAMC", "expert:audio", "expert:image", "NaiveMC", "expert:point"]
    resolved = cm.resolve(variants, Coefficients(), {"image", "audio", "point"})
    batch = cm.routed_batch(cm.prompt_rows(QUESTION, inputs, resolved))
    table = cm.coef_table(resolved)
    assert len(length_buckets(batch.lengths)) > 1, batch.lengths
    last, cache = prefill(cm.model, cm.router, batch, table)
    padded = prefill_logits(cm.model, cm.router, batch, table)[:, -1]
    assert (last - padded).abs().max() <= 1e-4
    assert cache.get_seq_length() == max(batch.lengths)  # one cache, every row left-padded to the longest
    # A token budget of one longest row per pass: every row its own pass, the same numbers.
    assert len(length_buckets(batch.lengths, max_tokens=max(batch.lengths))) == len(batch.lengths)
    one_each, cache_each = prefill(cm.model, cm.router, batch, table, max_tokens=max(batch.lengths))
    assert (one_each - padded).abs().max() <= 1e-4
    for a, b in zip(cache.layers, cache_each.layers):
        assert (a.keys - b.keys).abs().max() <= 1e-4 and (a.values - b.values).abs().max() <= 1e-4
    # Decoding from the joined cache gives what each row gives alone.
    config = GenerationConfig(max_new_tokens=6)
    together = cm.compare(QUESTION, inputs, variants, config=config)
    for name, answer in zip(variants, together):
        assert answer.token_ids == cm.compare(QUESTION, inputs, [name], config=config)[0].token_ids, name
