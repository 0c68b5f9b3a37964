"""The synthetic world, the instruction data and MCUB-synth (CPU, a few seconds).

What is proven: rendering is a pure function of the scene (same seed -> same bytes in every
modality, another seed -> other bytes); every generated file loads through the project's
own loaders; every MCUB-synth item leaves >= 2 options per single modality and exactly the
answer in common, so a perfect single-modality reader is at ~50 % and a perfect combiner
at 100 %; letters are balanced; the JSON has MCUB's layout.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from composition.evaluation import score_answer
from modalities import get_modality
from training import CATEGORIES, COLOURS, LABELS, MODALITIES, Scene, SceneObject, World, render
from training.instructions import KINDS, LETTERS, make_instruction_items, question_for
from training.mcub_synth import SYNTH3_SUBSETS, build_mcub_synth, check_item_design, plan_mcub_synth
from training.world import EXTENSIONS

SCENE = Scene((SceneObject("ball", "red"), SceneObject("cube", "blue"), SceneObject("ring", "yellow")), seed=11)
SETS = [("synth-4", None), ("synth-3", None)] + [("synth-3", s) for s in SYNTH3_SUBSETS]


# ---------------------------------------------------------------- world and renderers

@pytest.mark.parametrize("modality", MODALITIES)
def test_render_is_deterministic(modality, tmp_path):
    ext = EXTENSIONS[modality]
    a = render(SCENE, modality, tmp_path / f"a{ext}").read_bytes()
    b = render(SCENE, modality, tmp_path / f"b{ext}").read_bytes()
    other = Scene(SCENE.objects, seed=12)
    c = render(other, modality, tmp_path / f"c{ext}").read_bytes()
    assert a == b, f"{modality}: the same scene gave different bytes"
    assert a != c, f"{modality}: another scene seed gave the same bytes"


@pytest.mark.parametrize("modality", MODALITIES)
def test_files_load_through_project_loaders(modality, tmp_path):
    path = render(SCENE, modality, tmp_path / f"scene{EXTENSIONS[modality]}")
    loaded = get_modality(modality).load(path)
    data = loaded.data.numpy()
    assert np.isfinite(data).all()
    if modality == "image":
        assert data.shape == (3, 224, 224)
    elif modality == "audio":
        assert 1.0 * 16_000 <= data.shape[0] <= 4.2 * 16_000  # 1..~4 s at 16 kHz
        assert np.abs(data).max() > 0.1
    elif modality == "video":
        assert data.shape[0] == 8 and data.shape[1] == 3 and loaded.meta["frame_count"] == 16
        assert not np.allclose(data[0], data[-1]), "objects should move"
    else:
        assert data.shape == (get_modality("point").limits.num_points, 6)
        assert (data[:, 3:] >= 0).all() and (data[:, 3:] <= 1).all()
        assert loaded.meta["has_color"]


def test_point_cloud_colours_and_size():
    from training.render_point import POINTS_PER_OBJECT, cloud

    points = cloud(SCENE)
    assert points.dtype == np.float32 and points.shape == (3 * POINTS_PER_OBJECT, 6)
    mean_rgb = points[:, 3:].reshape(-1, 3)
    for colour in ("red", "blue", "yellow"):  # each object's colour is there, up to the noise
        target = np.array(COLOURS[colour]) / 255
        assert (np.linalg.norm(mean_rgb - target, axis=1) < 0.15).sum() > POINTS_PER_OBJECT * 0.9


def test_speech_is_deterministic():
    from training.render_audio import speak, speech_available

    if not speech_available():
        pytest.skip("espeak-ng is not installed")
    first = speak("a red ball", "en-us", 190, 50).copy()
    speak.cache_clear()
    again = speak("a red ball", "en-us", 190, 50)
    assert np.array_equal(first, again) and 0.3 < len(first) / 16_000 < 1.5


def test_sample_scene_respects_arguments():
    world, rng = World(3), np.random.default_rng(0)
    for _ in range(50):
        scene = world.sample_scene(rng, include=("drum",), exclude=("ball", "star"))
        assert "drum" in scene.categories and not {"ball", "star"} & set(scene.categories)
        assert 1 <= len(scene.objects) <= 3 and len(set(scene.categories)) == len(scene.objects)
    same = [World(5).sample_scene(np.random.default_rng(1)) for _ in range(2)]
    assert same[0] == same[1]


def test_scene_and_render_errors_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="'car'"):
        SceneObject("car", "red")
    with pytest.raises(ValueError, match="distinct"):
        Scene((SceneObject("ball", "red"), SceneObject("ball", "blue")), seed=0)
    with pytest.raises(ValueError, match=r"\.png"):
        render(SCENE, "image", tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="'smell'"):
        render(SCENE, "smell", tmp_path / "x.png")
    with pytest.raises(ValueError, match="n_objects"):
        World(0).sample_scene(np.random.default_rng(0), n_objects=4)


def test_describe_phrasing():
    assert SCENE.describe() == "A red ball, a blue cube and a yellow ring."
    assert Scene((SceneObject("cone", "orange"),), 0).describe() == "An orange cone."


# ---------------------------------------------------------------- instruction data

@pytest.mark.parametrize("modality", MODALITIES)
def test_instruction_items(modality, tmp_path):
    items = make_instruction_items(modality, 5, seed=1, out_dir=tmp_path / "a")
    again = make_instruction_items(modality, 5, seed=1, out_dir=tmp_path / "b")
    assert items == again
    for item in items:
        assert set(item) == {"id", "modality", "file", "kind", "question", "answer"}
        assert item["modality"] == modality and (tmp_path / "a" / item["file"]).is_file()
        # Every question names its modality, except MCUB's own wording ("these inputs").
        assert LABELS[modality] in item["question"] or item["kind"] == "common"
        assert (tmp_path / "a" / item["file"]).read_bytes() == (tmp_path / "b" / item["file"]).read_bytes()
    assert json.loads((tmp_path / "a" / f"instructions-{modality}.json").read_text()) == items


def test_every_question_kind_is_consistent_with_the_scene():
    rng = np.random.default_rng(0)
    for kind in KINDS:
        for _ in range(30):
            question, answer = question_for(kind, SCENE, "video", rng)
            assert ("video" in question or kind == "common") and answer
            if kind in ("appear", "common"):
                options = dict(zip(LETTERS, question.split("? ", 1)[1].replace(" Answer with the option's letter.", "")
                                   .replace("A. ", "|").replace(" B. ", "|").replace(" C. ", "|")
                                   .replace(" D. ", "|").split("|")[1:]))
                picked = re.findall(r"(\w+) \(([A-D])\)", answer)  # "cube (A) and star (C)"
                present = {letter for letter, cat in options.items() if cat in SCENE.categories}
                assert {letter for _, letter in picked} == present, (question, answer)
                assert all(options[letter] == word for word, letter in picked), (question, answer)
                assert score_answer(answer) == picked[0][1]  # MCUB's first-letter rule reads the option's letter
                if kind == "common":
                    assert len(picked) == 1
            if kind == "yesno":
                cat = question.split("Is there a ", 1)[1].split(" in")[0]
                assert answer == ("Yes." if cat in SCENE.categories else "No.")
            if kind == "colour":
                cat = question.split("the ", 1)[1].split(" in")[0]
                assert answer == SCENE.colour_of(cat).capitalize() + "."


# ---------------------------------------------------------------- MCUB-synth

@pytest.mark.parametrize("kind,subset", SETS)
def test_mcub_item_design_property(kind, subset):
    items = plan_mcub_synth(kind, seed=0, n_items=40, subset=subset)
    for item in items:
        meta = item["meta"]
        check_item_design(meta)
        options, answer = meta["options"], meta["answer_category"]
        shown = {m: {c for c, _ in objs} for m, objs in meta["scenes"].items()}
        assert len(shown) == (4 if kind == "synth-4" else 3)
        assert all(len(s & set(options)) >= 2 for s in shown.values())
        assert set.intersection(*shown.values()) & set(options) == {answer}
        assert set(item["modal_inputs"]) == set(meta["modalities"]) == set(shown)
        if subset:
            assert tuple(meta["modalities"]) == subset


@pytest.mark.parametrize("kind,subset", [("synth-4", None), ("synth-3", None)])
def test_single_modality_is_ambiguous_and_the_combination_is_not(kind, subset):
    """A perfect single-modality reader (knows exactly which objects its input shows and picks
    a shown option) stays near 50 %; intersecting all inputs is always right."""
    items = plan_mcub_synth(kind, seed=1, n_items=200, subset=subset)
    rng = np.random.default_rng(0)
    for modality in MODALITIES:
        hits = total = 0
        for item in items:
            meta = item["meta"]
            if modality not in meta["scenes"]:
                continue
            shown = [o for o in meta["options"] if o in {c for c, _ in meta["scenes"][modality]}]
            hits += shown[int(rng.integers(len(shown)))] == meta["answer_category"]
            total += 1
        assert 0.35 < hits / total < 0.65, (modality, hits / total)
    for item in items:
        meta = item["meta"]
        common = set.intersection(*({c for c, _ in objs} for objs in meta["scenes"].values()))
        letter = LETTERS[[o in common for o in meta["options"]].index(True)]
        assert letter == item["conversations"][1]["value"]


@pytest.mark.parametrize("kind,subset", SETS)
def test_answer_letters_and_categories_are_balanced(kind, subset):
    items = plan_mcub_synth(kind, seed=2, n_items=40, subset=subset)
    letters = Counter(item["conversations"][1]["value"] for item in items)
    assert set(letters) == set(LETTERS) and max(letters.values()) - min(letters.values()) <= 1
    answers = Counter(item["meta"]["answer_category"] for item in items)
    assert set(answers) == set(CATEGORIES) and max(answers.values()) - min(answers.values()) <= 1


def test_check_item_design_rejects_broken_items():
    meta = plan_mcub_synth("synth-3", seed=0, n_items=1)[0]["meta"]
    broken = json.loads(json.dumps(meta))
    distractor = next(o for o in broken["options"] if o != broken["answer_category"])
    for objects in broken["scenes"].values():  # a distractor in every input: two common options
        if distractor not in [c for c, _ in objects]:
            objects.append([distractor, "red"])
    with pytest.raises(ValueError, match="in all inputs"):
        check_item_design(broken)
    lonely = json.loads(json.dumps(meta))
    first = next(iter(lonely["scenes"]))
    lonely["scenes"][first] = [[meta["answer_category"], "red"]]  # one input shows a single option
    with pytest.raises(ValueError, match="at least 2 options"):
        check_item_design(lonely)
    wrong = dict(meta, answer=LETTERS[(LETTERS.index(meta["answer"]) + 1) % 4])
    with pytest.raises(ValueError, match="does not name"):
        check_item_design(wrong)


def test_build_writes_mcub_layout_deterministically(tmp_path):
    path = build_mcub_synth("synth-4", seed=0, n_items=2, out_dir=tmp_path / "a")
    again = build_mcub_synth("synth-4", seed=0, n_items=2, out_dir=tmp_path / "b")
    other = build_mcub_synth("synth-4", seed=1, n_items=2, out_dir=tmp_path / "c")
    assert path.read_bytes() == again.read_bytes() and path.read_bytes() != other.read_bytes()
    items = json.loads(path.read_text())
    assert [item["id"] for item in items] == ["synth4-0001", "synth4-0002"]
    for item in items:
        human, gpt = item["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        assert "What do these inputs have in common?" in human["value"]
        assert all(f"{letter}. " in human["value"] for letter in LETTERS)
        assert score_answer(gpt["value"]) == gpt["value"] == item["meta"]["answer"]
        assert list(item["modal_inputs"]) == list(MODALITIES)
        for modality, rel in item["modal_inputs"].items():
            assert not Path(rel).is_absolute()
            file = path.parent / rel
            assert file.read_bytes() == (again.parent / rel).read_bytes()
            loaded = get_modality(modality).load(file)
            assert loaded.modality == modality


def test_build_synth3_subset(tmp_path):
    path = build_mcub_synth("synth-3", seed=0, n_items=2, out_dir=tmp_path, subset=("point", "image", "audio"))
    assert path.name == "mcub-synth3-iap.json"
    for item in json.loads(path.read_text()):
        assert list(item["modal_inputs"]) == ["image", "audio", "point"]
        assert all((tmp_path / rel).is_file() for rel in item["modal_inputs"].values())


def test_build_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="synth-5"):
        build_mcub_synth("synth-5", 0, 1, tmp_path)
    with pytest.raises(ValueError, match="synth-3 only"):
        build_mcub_synth("synth-4", 0, 1, tmp_path, subset=("image", "audio", "video"))
    with pytest.raises(ValueError, match="3 distinct modalities"):
        build_mcub_synth("synth-3", 0, 1, tmp_path, subset=("image", "image", "video"))
    with pytest.raises(ValueError, match="n_items"):
        plan_mcub_synth("synth-4", 0, 0)


def test_score_answer():
    assert score_answer("B") == "B" and score_answer(" C and D") == "C" and score_answer("none") is None


def test_bundled_examples_manifest():
    root = Path(__file__).resolve().parent.parent / "examples"
    manifest = json.loads((root / "manifest.json").read_text())
    kinds = Counter(entry["kind"] for entry in manifest["examples"])
    assert kinds["single"] == 4 and kinds["mcub-synth-4"] == 2
    total = 0
    for entry in manifest["examples"]:
        assert entry["question"] and entry["answer"]
        for modality, rel in entry["files"].items():
            file = root / rel
            total += file.stat().st_size
            get_modality(modality).load(file)
    assert total < 1_000_000
    for item in json.loads((root / manifest["mcub_json"]).read_text()):
        check_item_design(item["meta"])
