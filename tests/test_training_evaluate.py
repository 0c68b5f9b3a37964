"""python -m training.evaluate (the targets' check) and training.curves (accuracy against steps):
scoring logic with known answers, plumbing on the tiny base, the recipe's checkpoint hook, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from composition.composer import ComposedModel
from composition.inputs import ModalInput
from composition.random_models import (
    features_as_data,
    random_expert,
    random_features,
    tiny_base,
)
from training import evaluate
from training.curves import CurveError, Variant, measure
from training.data import ModalityData
from training.evaluate import (
    EvaluateError,
    ask_all,
    check_examples,
    exact_match_table,
    heldout_questions,
    target_misses,
)
from training.instructions import KINDS
from training.recipe import MLP_TARGETS, TARGETS, TrainConfig, Trainer
from training.world import NUMBER_WORDS, World


# --- held-out questions and scoring ------------------------------------------------------------
def test_heldout_questions_are_fresh_per_seed_and_cover_every_kind_in_turn():
    a = heldout_questions("image", 14, seed=5)
    assert [q["kind"] for q in a] == list(KINDS) * 2
    assert [(q["question"], q["answer"]) for q in a] == [(q["question"], q["answer"]) for q in heldout_questions("image", 14, seed=5)]
    b = heldout_questions("image", 14, seed=6)
    assert [q["scene"] for q in a] != [q["scene"] for q in b]
    for q in a:  # the answer is the scene's truth
        if q["kind"] == "count":
            assert q["answer"] == NUMBER_WORDS[len(q["scene"].objects)].capitalize() + "."
        if q["kind"] == "describe":
            assert all(o.category in q["answer"] and o.colour in q["answer"] for o in q["scene"].objects)
    assert "colour" not in {q["kind"] for q in heldout_questions("audio", 12, seed=5, colours_known=False)}


def test_exact_match_table_scores_known_answers_per_kind():
    items = heldout_questions("point", 14, seed=3)
    # right on every "yesno" and "count", wrong elsewhere; case and final period do not matter
    answers = [q["answer"].lower().rstrip(".") if q["kind"] in ("yesno", "count") else "a cube" for q in items]
    table = exact_match_table(items, answers)
    assert table["yesno"] == 1.0 and table["count"] == 1.0
    assert table["describe"] == 0.0 and table["appear"] == 0.0
    assert table["overall"] == round(4 / 14, 3)
    assert list(table) == list(KINDS) + ["overall"]
    with pytest.raises(ValueError, match="3 answers for 14 items"):
        exact_match_table(items, answers[:3])


def test_target_misses_name_what_falls_short():
    table = {"describe": 0.9, "objects": 0.4, "overall": 0.79}
    assert target_misses("decoupled", table) == ["overall 0.790 < 0.8", "objects 0.400 < 0.5"]
    assert target_misses("shared", table) == ["objects 0.400 < 0.5"]
    assert target_misses("shared", {"describe": 0.5, "overall": 0.7}) == []


# --- plumbing on the tiny base -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_cm():
    base = tiny_base()
    cm = ComposedModel(base, feature_fn=features_as_data)
    experts = [random_expert(base, "img", "image", "decoupled", seed=1), random_expert(base, "img-shared", "image", "shared", seed=2)]
    for e in experts:
        cm.add_expert(e)
    return cm, experts


def test_ask_all_answers_every_item_for_every_expert(tiny_cm):
    cm, _ = tiny_cm
    items = heldout_questions("image", 3, seed=1)
    inputs = {id(q): [ModalInput("image", random_features(3, seed=i))] for i, q in enumerate(items)}
    answers = ask_all(cm, ["img", "img-shared"], items, lambda q: inputs[id(q)], max_new_tokens=4)
    assert set(answers) == {"img", "img-shared"}
    assert all(len(v) == 3 and all(isinstance(a, str) for a in v) for v in answers.values())
    # the experts differ, so (with random weights) their answers do too; and each is what compare gives alone
    alone = cm.compare(items[0]["question"], inputs[id(items[0])], ["expert:img"],
                       config=evaluate_generation(4))[0].answer
    assert answers["img"][0] == alone
    table = exact_match_table(items, answers["img"])
    assert set(table) == {"describe", "objects", "colour", "overall"} and 0.0 <= table["overall"] <= 1.0


def evaluate_generation(n):
    from composition.generate import GenerationConfig

    return GenerationConfig(max_new_tokens=n)


def test_check_examples_refuses_a_file_that_is_no_manifest(tiny_cm, tmp_path):
    cm, experts = tiny_cm
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps({"items": []}))
    with pytest.raises(EvaluateError, match="no 'examples' list"):
        check_examples(cm, experts, bad)
    # a manifest whose single examples are of other modalities asks nothing
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"examples": [{"id": "a", "kind": "single", "question": "q", "answer": "a",
                                               "files": {"audio": "a.wav"}}]}))
    assert check_examples(cm, experts, other) == []


@pytest.mark.parametrize("argv, message", [
    (["--items", "0"], "--items=0; expected a positive integer"),
    (["--seed", "-1"], "--seed=-1"),
    (["--experts", "/nonexistent/experts"], "does not exist"),
    (["--examples", "/nonexistent/manifest.json"], "examples manifest"),
])
def test_cli_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


# --- training.curves ---------------------------------------------------------------------------
def test_variant_parse_reads_settings_and_refuses_bad_ones():
    recipe = TrainConfig()
    v = Variant.parse("rank=8,targets=mlp")
    config = v.config(recipe)
    assert (config.rank, config.alpha) == (8, 16.0)  # alpha / rank stays the recipe's
    assert v.targets == "mlp"
    assert Variant.parse("steps=140").config(recipe).stage2_steps_for("audio") == 140
    assert Variant.parse("recipe").config(recipe) == recipe
    assert Variant.parse("schedule=constant,batch=16,lr=1e-3").config(recipe).batch_size == 16
    for bad in ("rank=0", "targets=all", "schedule=linear", "lr=-1", "steps", "warmup=3"):
        with pytest.raises(CurveError, match="variant"):
            Variant.parse(bad)


def tiny_data(n=12, seed=0, dim=1280):
    world, rng = World(seed), np.random.default_rng(seed)
    scenes = [world.sample_scene(rng) for _ in range(n)]
    return ModalityData("image", scenes, [torch.randn(3, dim, generator=torch.Generator().manual_seed(seed * 100 + i)) for i in range(n)])


TINY = TrainConfig(stage0_steps=3, stage1_steps=1, stage2_steps=3, stage2_steps_by_modality=(), batch_size=2, warmup_steps=1)


def test_stage2_checkpoints_observe_the_run_without_changing_it():
    trainer = Trainer(tiny_base(), TINY, log=lambda m: None)
    data = tiny_data()
    parts = trainer.stage1(data)
    plain, _, _ = trainer.stage2(data, parts, "decoupled")
    seen = []

    def at_checkpoint(step, deltas, tuned):
        # the training slots are lifted off while a checkpoint runs, so experts can be loaded and asked
        assert not any(layer.trainable for layer in trainer.layers.values())
        seen.append((step, float(sum(b.abs().sum() for b in deltas["text"].B.values()))))

    watched, _, _ = trainer.stage2(data, parts, "decoupled", checkpoints=(0, 2, 3), at_checkpoint=at_checkpoint)
    assert [s for s, _ in seen] == [0, 2, 3]
    assert seen[0][1] == 0.0 and seen[1][1] > 0.0  # B starts at zero (the base), then trains
    for name in ("text", "modality"):
        for module in plain[name].A:
            assert torch.equal(plain[name].A[module], watched[name].A[module])
            assert torch.equal(plain[name].B[module], watched[name].B[module])


def test_trainer_targets_choose_the_layers_that_get_deltas():
    trainer = Trainer(tiny_base(), TINY, log=lambda m: None)
    assert {n.rsplit(".", 1)[-1] for n in trainer.layers} == set(TARGETS)
    trainer.reconfigure(TINY, MLP_TARGETS, "constant")
    assert {n.rsplit(".", 1)[-1] for n in trainer.layers} == set(MLP_TARGETS)
    data = tiny_data()
    deltas, _, _ = trainer.stage2(data, trainer.stage1(data), "shared")
    assert {m.rsplit(".", 1)[-1] for m in deltas["shared"].A} == set(MLP_TARGETS)
    with pytest.raises(ValueError, match="subset of"):
        trainer.reconfigure(TINY, ("lm_head",))
    with pytest.raises(ValueError, match="schedule"):
        trainer.reconfigure(TINY, TARGETS, "linear")


def test_measure_scores_stage0_and_each_variant_at_its_checkpoints(tmp_path):
    trainer = Trainer(tiny_base(), TINY, log=lambda m: None)
    data, heldout = tiny_data(), tiny_data(n=7, seed=9)
    writes = []
    result = measure(trainer, data, heldout, "image", "decoupled", [Variant.parse("recipe"), Variant.parse("steps=4,rank=2")],
                     checkpoints=[0, 2], write=lambda r: writes.append(json.dumps(r)), log=lambda m: None)
    assert set(result["stage0_only"]) == set(KINDS) | {"overall"}
    assert [p["step"] for p in result["variants"]["recipe"]["points"]] == [0, 2, 3]
    assert [p["step"] for p in result["variants"]["steps=4,rank=2"]["points"]] == [0, 2, 4]
    assert result["variants"]["steps=4,rank=2"]["settings"] == {"rank": 2, "steps": 4}
    assert len(writes) >= 7  # after every point: a run stopped early keeps what it measured
    assert trainer.config == TINY and {n.rsplit(".", 1)[-1] for n in trainer.layers} == set(TARGETS)
    pytest.importorskip("matplotlib")
    from training.curves import plot

    png = plot(result, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the bundled experts -------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_on_the_bundled_image_experts(capsys):
    """Small N, one modality: the command runs end to end on real files and the JSON says what it measured.
    A broken pipeline (wrong encoder, lost projector) answers nothing right: the bundled image
    experts measure 0.77-0.81 on 84 held-out scenes (README), stage 0 alone 0.0, and both
    describe the bundled image example exactly."""
    from composition.discovery import BUNDLED_EXPERTS

    code = evaluate.main(["--experts", str(BUNDLED_EXPERTS / "image"), str(BUNDLED_EXPERTS / "image-shared"),
                          "--items", "7", "--seed", "31", "--examples", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["experts"]) == {"image", "image-shared"}
    for name, r in report["experts"].items():
        assert r["items"] == 7 and set(r["accuracy"]) == set(KINDS) | {"overall"}
        assert r["accuracy"]["overall"] >= 1 / 7, (name, r)
    assert {(r["example"], r["expert"]) for r in report["examples"]} == {("image-example", "image"), ("image-example", "image-shared")}
    assert all(r["right"] for r in report["examples"]), report["examples"]
