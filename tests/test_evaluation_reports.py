"""Paired statistics on MCUB results, retention against the base, the λ/μ choice without labels (AdaMMS),
VLMEvalKit's TSV, the streaming stop's settled answers and the shared-prefix prefill."""
from __future__ import annotations

import pytest
import torch

from composition.composer import ComposedModel, RowRequest, shared_prefixes
from composition.errors import CompositionError
from composition.evaluation import Prediction, evaluate, load_mcub
from composition.evaluation.paired import format_report, markdown_tables, paired_report
from composition.evaluation.retention import (ARITHMETIC, CHAT, TextItem, lookup_questions, measure_retention,
                                              stated_number)
from composition.evaluation.scoring import RULES
from composition.evaluation.stats import mcnemar_exact
from composition.evaluation.unsupervised import Cell, agreement_scores, answer_cells, grid_cells, search_coefficients
from composition.evaluation.vlmevalkit import read_tsv, split_options, write_vlmevalkit_tsv
from composition.generate import GenerationConfig
from composition.random_models import pooled_features, random_experts_of_both_kinds, tiny_base

MODALITIES = ("image", "audio", "video", "point")
CONFIG = GenerationConfig(max_new_tokens=4)


@pytest.fixture(scope="module")
def mcub_dir(tmp_path_factory):
    from training.mcub_synth import build_mcub_synth

    out = tmp_path_factory.mktemp("mcub35")
    build_mcub_synth("synth-4", seed=7, n_items=6, out_dir=out)
    return out


@pytest.fixture(scope="module")
def items(mcub_dir):
    return load_mcub(mcub_dir / "mcub-synth4.json")


@pytest.fixture(scope="module")
def cm():
    base = tiny_base()
    experts = random_experts_of_both_kinds(base, MODALITIES, seed=500)
    return ComposedModel(base, experts, feature_fn=pooled_features)


def preds(variant: str, outcomes: str) -> list[Prediction]:
    """'1101' -> four predictions of ``variant``, items i0.., right where 1."""
    return [Prediction(f"i{k}", variant, "A" if c == "1" else "B", "A" if c == "1" else "B", "A")
            for k, c in enumerate(outcomes)]


# --- paired statistics ----------------------------------------------------------------
def test_paired_report_counts_the_right_alone_items_and_tests_them_exactly():
    a, b, c = "11111110", "10000001", "11111110"
    report = paired_report(preds("DAMC", a) + preds("NaiveMC", b) + preds("ties", c), ["DAMC", "NaiveMC", "ties"])
    damc = report["variants"]["DAMC"]
    assert (damc["accuracy"], damc["right"], damc["items"]) == (0.875, 7, 8)
    assert damc["ci95"][0] <= 0.875 <= damc["ci95"][1] < 1.0 + 1e-9
    pair = report["pairs"][0]
    assert (pair["a"], pair["b"], pair["only_a"], pair["only_b"], pair["both"], pair["neither"]) == ("DAMC", "NaiveMC", 6, 1, 1, 0)
    assert pair["p_value"] == pytest.approx(mcnemar_exact(6, 1), abs=1e-6)
    same = report["pairs"][1]  # DAMC vs ties: identical answers, nothing tells them apart
    assert (same["only_a"], same["only_b"], same["p_value"]) == (0, 0, 1.0)
    text = "\n".join(format_report(report))
    assert "DAMC vs NaiveMC: 6 right with DAMC alone, 1 with NaiveMC alone (of 8)" in text and "[" in text
    table = markdown_tables(report)
    assert table[0].startswith("| variant | accuracy | 95 % interval") and any("| DAMC | NaiveMC | 6 | 1 |" in l for l in table)


def test_the_runner_reports_statistics_per_variant_and_subset(cm, items):
    result = evaluate(cm, items[:3], ["DAMC", "expert:image"], config=CONFIG, batch_items=3)
    summary = result.to_json()
    stats = summary["statistics"]
    assert set(stats["variants"]) == {"DAMC", "expert:image"} and len(stats["pairs"]) == 1
    assert stats["variants"]["DAMC"]["accuracy"] == round(result.accuracy()["DAMC"], 4)
    pair = stats["pairs"][0]
    both = [(p.correct, q.correct) for p, q in zip(result.predictions[0::2], result.predictions[1::2])]
    assert (pair["only_a"], pair["only_b"]) == (sum(x and not y for x, y in both), sum(y and not x for x, y in both))


# --- streaming stop and shared prefixes ---------------------------------------------------
@pytest.mark.parametrize("text, settled", [("star (C", False), ("star (C)", True), ("b", False), ("b)", True), ("C", False),
                                           ("Cat", False), (" (A) ball", True), ("", False)])
def test_a_letter_answer_is_settled_only_when_no_more_text_can_change_its_score(text, settled):
    rule = RULES["letter"]
    assert rule.settled(text) is settled
    if settled:  # whatever follows, the score stays
        for more in ("", "at", " D", "B)", "bc"):
            assert rule.predicted(text + more) == rule.predicted(text)


def test_first_char_is_settled_after_one_character_that_cannot_be_a_stop_string():
    rule = RULES["first-char"]
    assert rule.settled("A", ["</s>"]) and not rule.settled("<", ["</s>"]) and not rule.settled("  ", [])
    assert not RULES["vqa-exact"].settled("two")  # the whole answer counts: never stop early


def test_stopping_when_scored_gives_the_same_scores(cm, items):
    full = evaluate(cm, items, ["DAMC", "expert:audio"], config=GenerationConfig(max_new_tokens=12), batch_items=3,
                    stop_when_scored=False)
    early = evaluate(cm, items, ["DAMC", "expert:audio"], config=GenerationConfig(max_new_tokens=12), batch_items=3)
    assert [p.predicted for p in early.predictions] == [p.predicted for p in full.predictions]
    assert all(f.answer.startswith(e.answer) for e, f in zip(early.predictions, full.predictions))


def test_shared_prefixes_group_one_variants_rows_and_prefill_them_once(cm, items):
    from composition.evaluation.runner import _load_item_inputs
    from composition.generate import prefill, prefill_shared
    from composition.inputs import decoder_needs

    plan = cm.plan(set(MODALITIES), ["DAMC", "NaiveMC", "expert:image"])
    needs = decoder_needs(cm.experts.values())
    requests = [RowRequest(item.question, _load_item_inputs(item, needs)) for item in items[:3]]
    rows = [row for request in requests for row, _ in cm._request_rows(request, plan.variants)]
    groups = shared_prefixes(rows, 3)
    assert [members for members, _ in groups] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    for members, length in groups:  # the same tokens up to the first modality block
        assert all(rows[i].keys[:length] == rows[members[0]].keys[:length] for i in members)
        assert length < min(rows[i].length for i in members)
    batch = cm.routed_batch(rows)
    batch.shared_prefixes = groups
    table = cm.coef_table(list(plan.variants) * 3)
    whole, _ = prefill(cm.model, cm.router, batch, table)
    shared, cache, mask = prefill_shared(cm.model, cm.router, batch, table)
    assert torch.allclose(whole, shared, atol=1e-4)
    assert mask.sum(1).tolist() == batch.lengths  # every real position once, the padding masked
    # A token budget that splits the rest into one pass per row: the same numbers.
    one_each, _, mask_each = prefill_shared(cm.model, cm.router, batch, table, max_tokens=1)
    assert torch.allclose(whole, one_each, atol=1e-4) and mask_each.sum(1).tolist() == batch.lengths
    # Through the batch entry: several requests at once equal each request alone.
    together = cm.generate_rows(requests, plan, CONFIG)
    alone = [cm.generate_rows([r], plan, CONFIG)[0] for r in requests]
    assert [[a.token_ids for a in row] for row in together] == [[a.token_ids for a in row] for row in alone]


# --- retention ----------------------------------------------------------------------------
def test_retention_items_score_what_an_answer_states():
    assert stated_number("1 + 1 = 2 in mathematics.", (1, 1)) == 2
    assert stated_number("12 + 7 = 9", (12, 7)) == 9 and stated_number("Nineteen.", (12, 7)) == 19
    assert stated_number("The answer is 6.", (6, 1)) is None  # only the question's own number
    assert CHAT[3].correct("12 + 7 = 19.") and not CHAT[3].correct("12.")
    colours = CHAT[4]
    assert colours.correct("Red, Blue and Green.") and not colours.correct("Red and blue.")
    assert ARITHMETIC[0].question == "What is 2 + 2?" and ARITHMETIC[0].correct("Four.")
    with pytest.raises(CompositionError, match="needs a question"):
        TextItem("facts", "What?")


def test_lookup_questions_are_training_lookups_questions():
    """The same draw as training.lookup.letter_lookup_accuracy (question text and letter), seed for seed."""
    import numpy as np

    from training.instructions import mcub_question
    from training.world import CATEGORIES

    rng = np.random.default_rng([3, 41])
    for question, name, k in lookup_questions(6, seed=3):
        options = [CATEGORIES[i] for i in rng.choice(len(CATEGORIES), size=4, replace=False)]
        expected_k = int(rng.integers(4))
        assert (question, name, k) == (mcub_question(options), options[expected_k], expected_k)


def test_retention_compares_every_variant_with_the_base_on_the_same_items(cm):
    report = measure_retention(cm, ["DAMC", "NaiveMC"], lookup_items=8, items=CHAT + ARITHMETIC[:3], max_new_tokens=6)
    data = report.to_json()
    assert data["parts"] == {"lookup": 8, "chat": 5, "facts": 0, "arithmetic": 3}
    assert list(data["variants"]) == ["NaiveMC", "DAMC"] or list(data["variants"]) == ["DAMC", "NaiveMC"]
    for v, s in data["variants"].items():
        mine, base = report.outcomes(v), report.outcomes("base")
        assert s["kept"] == sum(a and b for a, b in zip(mine, base)) and s["base_right"] == sum(base)
        assert s["gained"] == sum(a and not b for a, b in zip(mine, base))
        assert s["items"] == 16 and 0 <= s["accuracy"] <= 1
    # The base row answers as the engine's base variant: no delta on any token.
    plain = cm.generate_rows([RowRequest(CHAT[0].question)], cm.plan(set(), ["base"]), GenerationConfig(max_new_tokens=6))
    asked = next(it for it in report.items if it["question"] == CHAT[0].question)
    assert asked["answers"]["base"] == plain[0][0].text
    with pytest.raises(CompositionError, match="n="):
        lookup_questions(0)


# --- coefficients without labels ----------------------------------------------------------
def test_adamms_criterion_counts_answers_that_differ_from_a_neighbour():
    scales, mus = [0.5, 1.0, 1.5, 2.0], [1.0]
    answers = {Cell(0.5, 1.0): ["a", "b", "c"], Cell(1.0, 1.0): ["a", "b", "x"], Cell(1.5, 1.0): ["a", "B", "x"],
               Cell(2.0, 1.0): ["z", "b", "x"]}
    scores = agreement_scores(answers, scales, mus)
    # The ends have no score (AdaMMS leaves them out); case is ignored as in its exact-match strategy.
    assert scores == {Cell(1.0, 1.0): 1, Cell(1.5, 1.0): 1}
    two_axes = {Cell(s, m): ["a"] for s in (0.5, 1.0, 1.5) for m in (0.5, 1.0)}
    two_axes[Cell(1.0, 0.5)] = ["b"]
    assert agreement_scores(two_axes, [0.5, 1.0, 1.5], [0.5, 1.0]) == {Cell(1.0, 0.5): 1, Cell(1.0, 1.0): 1}
    assert agreement_scores(answers, scales, mus, smooth=1)[Cell(1.0, 1.0)] == pytest.approx(1.0)
    with pytest.raises(CompositionError, match="distinct"):
        grid_cells([1, 1], [1])


def test_every_cell_in_one_batch_equals_each_cell_alone(cm, items):
    cells = [Cell(0.5, 1.0), Cell(1.0, 1.0), Cell(1.5, 0.5)]
    together = answer_cells(cm, items[:2], cells, config=CONFIG, batch_items=2)
    from composition.evaluation.tune import coefficients_at

    for cell in cells:
        alone = evaluate(cm, items[:2], ["DAMC"], config=CONFIG, batch_items=2, stop_when_scored=False,
                         coefficients_for=lambda m, c=cell: coefficients_at(cm, m, c.scale, c.mu))
        assert together[cell] == [p.answer for p in alone.predictions]


def test_search_reports_labelled_unsupervised_and_default_on_disjoint_test_items(cm, items):
    result = search_coefficients(cm, items[:3], items[3:], scales=[0.5, 1.0, 1.5], mus=[1.0], config=CONFIG, batch_items=3)
    data = result.to_json()
    assert data["search_items"] == 3 and data["test_items"] == 3
    assert set(data["test"]["variants"]) == {"paper default", "labelled tune", "unsupervised (AdaMMS)"}
    assert len(data["test"]["pairs"]) == 3 and result.unsupervised == Cell(1.0, 1.0)  # the only interior cell
    best = max(c["validation_accuracy"] for c in data["grid"])
    assert data["labelled"]["validation_accuracy"] == best
    with pytest.raises(CompositionError, match="also validation items"):
        search_coefficients(cm, items[:3], items[2:], scales=[0.5, 1.0, 1.5], mus=[1.0], config=CONFIG)


# --- VLMEvalKit ---------------------------------------------------------------------------
def test_vlmevalkit_tsv_has_its_columns_and_each_variants_answers(cm, items, tmp_path):
    question, options = split_options(items[0].question)
    assert question == "What do these inputs have in common?" and list(options) == ["A", "B", "C", "D"]
    result = evaluate(cm, items[:2], ["DAMC", "expert:point"], config=CONFIG, batch_items=2)
    written = write_vlmevalkit_tsv(result, items[:2], tmp_path)
    assert sorted(p.name for p in written.values()) == ["DAMC_MCUB.tsv", "expert-point_MCUB.tsv"]
    rows = read_tsv(written["DAMC"])
    assert list(rows[0])[:9] == ["index", "question", "A", "B", "C", "D", "answer", "prediction", "category"]
    assert [r["prediction"] for r in rows] == [p.answer for p in result.predictions if p.variant == "DAMC"]
    assert rows[0]["answer"] == items[0].answer and rows[0]["A"] == options["A"] and rows[0]["image_path"]
    with pytest.raises(CompositionError, match="does not list the options"):
        split_options("What is this?")


def test_an_empty_coefficient_grid_axis_is_refused(cm, items):
    with pytest.raises(CompositionError):
        search_coefficients(cm, items[:2], items[2:4], scales=[1.0], mus=[1.0], config=CONFIG)


# --- the command ----------------------------------------------------------------------------
def test_mcub_stats_from_saved_predictions_needs_no_model(tmp_path, capsys):
    import json

    from composition.cli.entry import main

    lines = [{"id": f"i{k}", "variant": v, "answer": "", "predicted": None, "gold": "A", "correct": c == "1", "subset": "s"}
             for v, outcomes in (("DAMC", "111111110"), ("NaiveMC", "100000011")) for k, c in enumerate(outcomes)]
    path = tmp_path / "run-predictions.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["mcub", "--stats-from", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["statistics"]
    pair = out["pairs"][0]
    assert (pair["only_a"], pair["only_b"], pair["both"], pair["neither"]) == (6, 1, 2, 0)
    assert pair["p_value"] == pytest.approx(mcnemar_exact(6, 1), rel=1e-3)
    assert main(["mcub", "--stats-from", str(path), "--variants", "NaiveMC"]) == 0
    assert "NaiveMC" in capsys.readouterr().out
    path.write_text("not json\n")
    assert main(["mcub", "--stats-from", str(path)]) == 2
    assert "line 1 is not a predictions line" in capsys.readouterr().err
    assert main(["mcub"]) == 2 and "--data is required" in capsys.readouterr().err
