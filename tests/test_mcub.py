"""The MCUB runner: layout checks, scoring, and batched evaluation equal to one-by-one answers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import composition.composer as composer
import composition.evaluation.runner as mcub
from composition.composer import ComposedModel
from composition.errors import CompositionError
from composition.generate import GenerationConfig
from composition.evaluation import (RULES, McubFormatError, McubItem, McubResult, Prediction, accuracy, evaluate, load_mcub,
                              score_answer)
from composition.variants import Coefficients
from tests.cli_runner import run_cli
from composition.random_models import pooled_features, random_experts_of_both_kinds, tiny_base

MODALITIES = ("image", "audio", "video", "point")
CONFIG = GenerationConfig(max_new_tokens=4)


# --- fixtures -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def mcub_dir(tmp_path_factory):
    """4 MCUB-synth-4 items and 4 MCUB-synth-3 items (one per subset), real files, one folder."""
    from training.mcub_synth import build_mcub_synth

    out = tmp_path_factory.mktemp("mcub")
    build_mcub_synth("synth-4", seed=3, n_items=4, out_dir=out)
    build_mcub_synth("synth-3", seed=3, n_items=4, out_dir=out)
    return out


@pytest.fixture(scope="module")
def items(mcub_dir):
    return load_mcub(mcub_dir / "mcub-synth4.json") + load_mcub(mcub_dir / "mcub-synth3.json")



@pytest.fixture(scope="module")
def cm():
    base = tiny_base()
    experts = random_experts_of_both_kinds(base, MODALITIES, seed=200)
    return ComposedModel(base, experts, feature_fn=pooled_features)


# --- batched evaluation -------------------------------------------------------------
def test_batched_evaluation_equals_each_item_and_variant_alone(cm, items):
    # 3 synth-4 items (one chunk of 2, then 1) and one item of each synth-3 subset, mixed in order.
    chosen = [items[0], items[4], items[1], items[5], items[6], items[2], items[7]]
    variants = ["NaiveMC", "DAMC", "ties", "expert:point-shared"]
    coef = Coefficients(lambdas={"image": 0.5, "audio": 0.4}, mus={"audio": 0.7})
    seen = []
    result = evaluate(cm, chosen, variants, coef, CONFIG, batch_items=2, progress=lambda d, t: seen.append((d, t)))
    assert result.variants == tuple(variants) and result.n_items == len(chosen)
    assert [(p.item_id, p.variant) for p in result.predictions] == [(i.id, v) for i in chosen for v in variants]
    assert seen == [(2, 7), (3, 7), (4, 7), (5, 7), (6, 7), (7, 7)]  # chunks of one modality set, ≤ 2 items each
    by_pair = {(p.item_id, p.variant): p for p in result.predictions}
    assert len({p.answer for p in result.predictions}) > 3  # the answers differ, so equality means something
    for item in chosen:
        alone = cm.compare(item.question, mcub._load_item_inputs(item), variants, coef, CONFIG, batched=False)
        for variant, answer in zip(variants, alone):
            p = by_pair[(item.id, variant)]
            assert answer.name == variant and p.answer == answer.answer, (item.id, variant)
            assert p.predicted == score_answer(answer.answer) and p.gold == item.answer
    assert result.items_per_second > 0


def test_default_variants_are_the_compositions_and_every_expert(cm, items):
    result = evaluate(cm, items[:1], batch_items=1)
    assert result.variants == ("NaiveMC", "DAMC", "expert:image", "expert:image-shared", "expert:audio",
                               "expert:audio-shared", "expert:video", "expert:video-shared", "expert:point",
                               "expert:point-shared")


def test_known_answers_are_scored_exactly(cm, items, monkeypatch):
    """Every row answers "B": accuracy is exactly the share of items whose gold letter is B."""
    b = cm.base.tokenizer("B", add_special_tokens=False)["input_ids"]

    def always_b(model, router, batch, table, config, eos, *args):
        assert table.shape[0] == batch.embeds.shape[0] * (table.shape[0] // batch.embeds.shape[0])
        return [list(b) for _ in range(batch.embeds.shape[0])]

    monkeypatch.setattr(composer, "generate_batch", always_b)
    result = evaluate(cm, items, ["DAMC", "expert:audio"], batch_items=8)
    expected = sum(i.answer == "B" for i in items) / len(items)
    assert 0 < expected < 1
    assert result.accuracy() == {"DAMC": expected, "expert:audio": expected}
    summary = result.to_json()
    assert summary["items"] == len(items) and set(summary["subsets"]) == {
        "image+audio+video+point", "image+audio+video", "image+audio+point", "image+video+point", "audio+video+point"}
    sub = summary["subsets"]["image+audio+video+point"]
    assert sub["items"] == 4 and sub["accuracy"]["DAMC"] == round(sum(i.answer == "B" for i in items[:4]) / 4, 4)


def test_predictions_file_has_one_line_per_item_and_variant(cm, items, tmp_path):
    result = evaluate(cm, items[:2], ["DAMC", "expert:image"], batch_items=2)
    lines = result.write_predictions(tmp_path / "p.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 4 and set(rows[0]) == {"id", "variant", "answer", "predicted", "gold", "correct", "subset"}


# --- scoring ------------------------------------------------------------------------
@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("B.", "B"), ("(B)", "B"), ("Answer: B", "B"), ("b", "B"), ("  C  ", "C"), ("d.", "D"), ("(a)", "A"),
    ("c) drum", "C"), ("The answer is D.", "D"), ("A ball", "A"), ("B, the cone", "B"), ("**C**", "C"),
    ("a ball", None), ("Answer: b", None), ("ABC", None), ("E", None), ("", None), ("The ball.", None),
    ("Both A and B", "A"),
])
def test_score_answer(text, letter):
    assert score_answer(text) == letter


def test_accuracy_arithmetic():
    def p(variant, predicted, gold="A"):
        return Prediction("x", variant, predicted or "", predicted, gold)

    preds = [p("DAMC", "A"), p("DAMC", "B"), p("DAMC", "A"), p("DAMC", None),
             p("expert:image", "A"), p("expert:image", "C"), p("expert:image", "D"), p("expert:image", "A")]
    assert accuracy(preds) == {"DAMC": 0.5, "expert:image": 0.5}
    assert accuracy(preds[:3], ["DAMC"]) == {"DAMC": pytest.approx(2 / 3)}
    with pytest.raises(CompositionError, match="no predictions for variant 'NaiveMC'"):
        accuracy(preds, ["DAMC", "NaiveMC"])
    result = McubResult(("DAMC", "expert:image"), preds, 4, 2.0)
    assert result.items_per_second == 2.0 and result.to_json()["accuracy"] == {"DAMC": 0.5, "expert:image": 0.5}
    with pytest.raises(CompositionError, match="one per pair"):
        McubResult(("DAMC",), preds, 4, 1.0)


# --- layout -------------------------------------------------------------------------
def write(folder: Path, data) -> Path:
    path = folder / "data.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.fixture
def one_item(mcub_dir, tmp_path):
    """A tmp folder with one synth-4 item and its files (so the tests can change either)."""
    shutil.copytree(mcub_dir / "files", tmp_path / "files")
    item = json.loads((mcub_dir / "mcub-synth4.json").read_text())[0]
    return tmp_path, item


def test_load_mcub_reads_the_layout_and_aliases(one_item):
    folder, item = one_item
    inputs = item["modal_inputs"]
    item["modal_inputs"] = {"pc": inputs["point"], "Image": inputs["image"], "audio": inputs["audio"], "video": inputs["video"]}
    item["conversations"][0]["value"] = "<image>\n<audio>\n" + item["conversations"][0]["value"]
    item["conversations"][1]["value"] = "(C) the answer"
    loaded = load_mcub(write(folder, [item]))[0]
    assert isinstance(loaded, McubItem) and loaded.answer == "(C) the answer"
    assert RULES["letter"].target(loaded.answer) == "C"  # the letter rule reads the gold's letter
    assert loaded.modalities == MODALITIES and loaded.subset == "image+audio+video+point"
    assert loaded.question.startswith("What do these inputs") and "<image>" not in loaded.question
    assert loaded.prompt.startswith("<image>\n<audio>\n")  # the human turn verbatim, for --prompt paper
    assert all(path.is_file() and folder.resolve() in path.parents for _, path in loaded.inputs)


@pytest.mark.parametrize("mutate, message", [
    (lambda item: {"items": [item]}, "must hold a non-empty JSON list"),
    (lambda item: [], "must hold a non-empty JSON list"),
    (lambda item: ["not an object"], "item 1 must be a JSON object"),
    (lambda item: [{**item, "conversations": None}], "'conversations' must be a non-empty list"),
    (lambda item: [{k: v for k, v in item.items() if k != "conversations"}], "'conversations' must be a non-empty list"),
    (lambda item: [{**item, "conversations": item["conversations"][:1]}], "the gold answer is missing"),
    (lambda item: [{**item, "conversations": [item["conversations"][1]]}], "no 'human' turn"),
    (lambda item: [{**item, "conversations": [{"from": "human", "value": 3}]}], "every turn must be"),
    (lambda item: [{k: v for k, v in item.items() if k != "modal_inputs"}], "'modal_inputs' must be a non-empty object"),
    (lambda item: [{**item, "modal_inputs": ["files/x.png"]}], "'modal_inputs' must be a non-empty object"),
    (lambda item: [{**item, "modal_inputs": {"smell": "files/x.png"}}], "unknown modal_inputs key 'smell'"),
    (lambda item: [{**item, "modal_inputs": {"image": 3}}], "must be a relative path"),
    (lambda item: [{**item, "modal_inputs": {"image": "files/missing.png"}}], "'files/missing.png' was not found"),
    (lambda item: [{**item, "modal_inputs": {"image": "../outside.png"}}], "leaves the JSON file's folder"),
    (lambda item: [{**item, "modal_inputs": {"image": "files/../../outside.png"}}], "leaves the JSON file's folder"),
    (lambda item: [{**item, "modal_inputs": {"image": "/etc/passwd"}}], "is absolute"),
    (lambda item: [item, item], "appears more than once"),
    (lambda item: [{**item, "id": True}], "must be a non-empty string or an integer"),
])
def test_layout_errors_are_clear(one_item, mutate, message):
    folder, item = one_item
    with pytest.raises(McubFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_mcub(write(folder, mutate(item)))


def test_a_gold_without_letter_is_refused_by_the_letter_rule_before_generation(cm, one_item):
    folder, item = one_item
    item["conversations"][1]["value"] = "the ball"
    loaded = load_mcub(write(folder, [item]))
    with pytest.raises(CompositionError, match="has no option letter A-D"):
        evaluate(cm, loaded, ["DAMC"], rule=RULES["letter"])


def test_invalid_json_and_missing_file(tmp_path):
    with pytest.raises(McubFormatError, match="'data.json' is not valid JSON"):
        load_mcub(write(tmp_path, "[{"))
    with pytest.raises(McubFormatError, match="'nope.json' was not found"):
        load_mcub(tmp_path / "nope.json")


def test_a_link_pointing_outside_the_folder_is_refused(one_item, tmp_path_factory):
    folder, item = one_item
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    shutil.copy(folder / item["modal_inputs"]["image"], outside)
    (folder / "files" / "link.png").symlink_to(outside)
    with pytest.raises(McubFormatError, match="points outside the JSON file's folder"):
        load_mcub(write(folder, [{**item, "modal_inputs": {"image": "files/link.png"}}]))


def test_a_chunks_files_are_decoded_on_threads_in_item_order(cm, items, monkeypatch):
    import threading

    from composition.inputs import decoder_needs

    needs = decoder_needs(cm.experts.values())
    chunk = items[:4]
    threads = set()
    real_open = mcub._open_input

    def recording(*args):
        threads.add(threading.current_thread().name)
        return real_open(*args)

    monkeypatch.setattr(mcub, "_open_input", recording)
    threaded = mcub._load_chunk_inputs(chunk, needs)
    assert threads and all(name.startswith("mcub-files") for name in threads)
    monkeypatch.setattr(mcub, "_open_input", real_open)
    alone = [mcub._load_item_inputs(item, needs) for item in chunk]
    assert [[(i.modality, i.path) for i in row] for row in threaded] == [[(m, str(p)) for m, p in item.inputs] for item in chunk]
    assert all(torch.equal(a.data, b.data) for row_a, row_b in zip(threaded, alone) for a, b in zip(row_a, row_b))


def test_a_bad_file_names_the_first_such_item_of_the_chunk(cm, items, tmp_path):
    import dataclasses

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not an image")
    chunk = list(items[:4])
    for k in (2, 3):  # two bad items: the error names the first, as one thread would
        chunk[k] = dataclasses.replace(chunk[k], id=f"bad-{k}", inputs=(("image", bad), *chunk[k].inputs[1:]))
    with pytest.raises(CompositionError, match="item 'bad-2': .*broken.png"):
        mcub._load_chunk_inputs(chunk)


def test_evaluate_checks_its_arguments(cm, items):
    with pytest.raises(CompositionError, match="batch_items=0"):
        evaluate(cm, items, batch_items=0)
    with pytest.raises(CompositionError, match="non-empty list of McubItem"):
        evaluate(cm, [])


# --- CLI ----------------------------------------------------------------------------
def test_cli_refuses_a_bad_data_file_in_one_line(tmp_path):
    bad = write(tmp_path, [{"id": 1, "conversations": [], "modal_inputs": {}}])
    result = run_cli("mcub", "--data", bad)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'conversations' must be a non-empty list" in lines[0], result.stderr


@pytest.mark.slow
def test_cli_mcub_json_contract(random_experts_dir, base_cache_dir, one_item):
    folder, item = one_item
    pair = {**item, "modal_inputs": {m: item["modal_inputs"][m] for m in ("image", "audio")}}
    data = write(folder, [pair, {**pair, "id": "second"}, {**pair, "id": "third"}])
    result = run_cli("mcub", "--data", data, "--experts", random_experts_dir, "--limit", 2, "--batch-items", 2, "--json",
                     cache=base_cache_dir)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["items"] == 2 and list(summary["accuracy"]) == ["DAMC", "expert:image", "expert:audio"]
    assert all(0 <= v <= 1 for v in summary["accuracy"].values()) and "subsets" not in summary
    predictions = folder / "data-predictions.jsonl"
    assert f"predictions: {predictions}" in result.stderr
    assert len(predictions.read_text().splitlines()) == 6


def test_length_buckets_bound_padding():
    from composition.generate import length_buckets

    lengths = [100, 260, 105, 250, 98, 240, 120]
    buckets = length_buckets(lengths)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    for bucket in buckets:
        assert max(lengths[i] for i in bucket) <= 1.25 * min(lengths[i] for i in bucket)
    assert len(buckets) == 2
    # A token budget per pass splits a bucket; every group keeps within it (a longer row alone).
    capped = length_buckets(lengths + [600], max_tokens=300)
    assert sorted(i for b in capped for i in b) == list(range(len(lengths) + 1))
    assert [7] in capped and len(capped) == 6
    for bucket in capped:
        assert len(bucket) == 1 or len(bucket) * max((lengths + [600])[i] for i in bucket) <= 300


def test_skip_and_limit_select_a_contiguous_range(one_item):
    """--skip N --limit M evaluates items N+1..M, so a run can extend an earlier --limit N run."""
    import argparse

    from composition.cli.mcub import _load_sets

    folder, item = one_item
    data = write(folder, [{**item, "id": f"q{i}"} for i in range(5)])
    args = argparse.Namespace(data=str(data), answers=None, data_root=None, limit=4, skip=2)
    _, items, _ = _load_sets(args)
    assert [i.id for i in items] == ["q2", "q3"]
    args.skip = 4
    with pytest.raises(CompositionError, match=r"--skip 4 leaves no items \(the sets hold 5, --limit 4\)"):
        _load_sets(args)


def test_cli_refuses_a_negative_skip(tmp_path, one_item):
    folder, item = one_item
    result = run_cli("mcub", "--data", write(folder, [item]), "--skip", -1)
    assert result.returncode == 2 and "--skip -1; expected 0 or a positive integer." in result.stderr, result.stderr


def test_a_skip_run_does_not_overwrite_the_earlier_predictions(one_item):
    """The default predictions file of a --skip run names its range, so the --limit run it extends keeps its file."""
    import argparse

    from composition.cli.mcub import _load_sets
    from composition.evaluation.predictions import output_paths

    def _output_paths(args, sets, stem):
        return output_paths(sets[0].path, stem, predictions=args.predictions, skip=args.skip, limit=args.limit)

    folder, item = one_item
    data = write(folder, [{**item, "id": f"q{i}"} for i in range(5)])
    first = argparse.Namespace(data=str(data), answers=None, data_root=None, limit=2, skip=0, predictions=None)
    rest = argparse.Namespace(**{**vars(first), "limit": None, "skip": 2})
    (pred_first, paper_first), (pred_rest, paper_rest) = (_output_paths(a, *_load_sets(a)[::2]) for a in (first, rest))
    assert pred_first.name == "data-predictions.jsonl" and pred_rest.name == "data-items3-end-predictions.jsonl"
    assert paper_first != paper_rest
