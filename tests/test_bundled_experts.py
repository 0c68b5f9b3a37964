"""The bundled experts (assets/experts/): each loads, and answers held-out questions about
its own modality from real files, end to end (file -> loader -> encoder -> expert)."""
from __future__ import annotations

import numpy as np
import pytest

from composition.discovery import BUNDLED_EXPERTS, scan_experts
from composition.composer import ComposedModel
from composition.inputs import load_inputs
from composition.generate import GenerationConfig
from training.evaluate import normalize
from training.instructions import question_for
from training.world import EXTENSIONS, MODALITIES, World, render

pytestmark = pytest.mark.slow
# Held-out scenes: a seed the training never used (training: 0, its held-out split: 1000).
HELDOUT_SEED = 4242
KINDS = ("objects", "yesno", "common")
ITEMS_PER_MODALITY = 9
# Floors = the accuracy measured on these 18 answers (9 items x 2 experts) less one answer, so
# a float difference between machines cannot flip the test while a broken pipeline (wrong
# encoder or projector, a bad fp16 round trip, a changed prompt) does. Chance on this mix is
# about 0.25 (objects ~0, yes/no 1/2, common 1/4). Measured: image 18/18, audio 18/18,
# video 18/18, point 18/18 (README, "Bundled experts").
FLOOR = {"image": 17 / 18, "audio": 17 / 18, "video": 17 / 18, "point": 17 / 18}
# Measured on these 24 questions: base 0.29, NaiveMC, DAMC and the video expert 1.00.
LOOKUP_FLOOR = 0.9
# Fresh MCUB-synth-4 items (seed HELDOUT_SEED), measured: DAMC 11/12, NaiveMC 12/12, the single
# experts 4-8/12 (image 8, audio 6, video 5, point 4); the floor is the lower less one answer.
MCUB_ITEMS = 12
COMPOSED_FLOOR = 10 / 12


@pytest.fixture(scope="module")
def bundled(base_cache_dir):
    from composition.base_llm import load_base_llm

    entries = scan_experts([BUNDLED_EXPERTS])
    # A base of its own: the composed model wraps the base's layers; the session's smollm2 stays plain.
    cm = ComposedModel(load_base_llm(cache_dir=base_cache_dir))
    for entry in entries:
        cm.load_expert(entry.folder)
    yield cm
    for name in list(cm.experts):
        cm.remove_expert(name)


def test_all_eight_experts_are_bundled_and_small():
    entries = scan_experts([BUNDLED_EXPERTS])
    assert sorted((e.config.modality, e.config.training) for e in entries) == sorted(
        (m, t) for m in MODALITIES for t in ("shared", "decoupled"))
    total = sum(p.stat().st_size for p in BUNDLED_EXPERTS.rglob("*.safetensors"))
    assert total <= 25 * 2**20, f"bundled weights are {total / 2**20:.1f} MB; the budget is 25 MB"


@pytest.mark.parametrize("modality", MODALITIES)
def test_expert_answers_its_own_modality(bundled, modality, tmp_path):
    world = World(HELDOUT_SEED)
    rng = np.random.default_rng([HELDOUT_SEED, MODALITIES.index(modality)])
    hits = []
    for i in range(ITEMS_PER_MODALITY):
        scene = world.sample_scene(rng)
        path = render(scene, modality, tmp_path / f"{i}{EXTENSIONS[modality]}")
        question, answer = question_for(KINDS[i % len(KINDS)], scene, modality, rng)
        inputs = load_inputs({modality: [path]})
        for name in (modality, f"{modality}-shared"):
            got = bundled.compare(question, inputs, [f"expert:{name}"], config=GenerationConfig(max_new_tokens=24))[0]
            hits.append(normalize(got.answer) == normalize(answer))
    accuracy = float(np.mean(hits))
    assert accuracy >= FLOOR[modality], f"{modality} experts: {accuracy:.2f} on held-out items (floor {FLOOR[modality]})"


def test_compositions_copy_the_option_letter(bundled):
    """Stage 3 put the option-letter lookup into every expert strongly enough to survive the
    1/K scaling of a composition; the base alone is at chance (why stage 3 exists)."""
    from training.lookup import letter_lookup_accuracy

    result = letter_lookup_accuracy(bundled, ["NaiveMC", "DAMC", "expert:video"], n=24, seed=7)
    assert result["base"] <= 0.5, result
    assert min(result["NaiveMC"], result["DAMC"], result["expert:video"]) >= LOOKUP_FLOOR, result


def test_compositions_find_what_every_input_shows_where_single_experts_cannot(bundled, tmp_path):
    """The paper's finding on fresh MCUB-synth-4 items: each input shows the answer and one
    distractor option, so a single expert (one input) is capped near 1/2, while DAMC and
    NaiveMC combine all four inputs (tests/test_world.py proves both bounds with oracle readers)."""
    from composition.evaluation import accuracy, evaluate
    from composition.evaluation.files import load_mcub
    from training.mcub_synth import build_mcub_synth

    items = load_mcub(build_mcub_synth("synth-4", HELDOUT_SEED, MCUB_ITEMS, tmp_path))
    singles = [f"expert:{m}" for m in MODALITIES]
    result = accuracy(evaluate(bundled, items, ["DAMC", "NaiveMC", *singles]).predictions)
    best_single = max(result[name] for name in singles)
    assert min(result["DAMC"], result["NaiveMC"]) >= COMPOSED_FLOOR, result
    assert min(result["DAMC"], result["NaiveMC"]) >= best_single + 0.2, result  # the margin
