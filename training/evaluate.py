"""Held-out accuracy of a trained expert on questions about its own modality."""
from __future__ import annotations

import re

import numpy as np

from .data import ModalityData
from .instructions import KINDS, question_for


def normalize(text: str) -> str:
    """Lower case, punctuation and extra spaces removed: 'A red ball.' == 'a red ball'."""
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def heldout_accuracy(trainer_or_cm, expert_folder, heldout: ModalityData, colours_known: bool = True, seed: int = 0,
                     max_new_tokens: int = 24) -> dict[str, float]:
    """Exact-match accuracy (after normalization) per question kind and overall.

    Args:
        trainer_or_cm: a ComposedModel (or a Trainer, whose composed model is used).
        expert_folder: the saved expert (evaluating the artifact users get, fp16 included).
        heldout: scenes never seen in training, with their encoded inputs.
    """
    from composition.composer import ModalInput, encode_with_registry
    from composition.generate import GenerationConfig

    cm = getattr(trainer_or_cm, "cm", trainer_or_cm)
    expert = cm.load_expert(expert_folder)
    previous = cm.feature_fn
    # Held-out inputs of frozen encoders are features already; point clouds are encoded by the expert's own encoder.
    cm.feature_fn = lambda e, item: encode_with_registry(e, item) if e.modality == "point" else item.data
    rng = np.random.default_rng([seed, 99])
    kinds = [k for k in KINDS if colours_known or k != "colour"]
    hits: dict[str, list[bool]] = {k: [] for k in kinds}
    try:
        for i, (scene, data) in enumerate(zip(heldout.scenes, heldout.inputs)):
            kind = kinds[i % len(kinds)]
            question, answer = question_for(kind, scene, heldout.modality, rng, colours_known)
            got = cm.compare(question, [ModalInput(heldout.modality, data)], [f"expert:{expert.name}"],
                             config=GenerationConfig(max_new_tokens=max_new_tokens))[0].answer
            hits[kind].append(normalize(got) == normalize(answer))
    finally:
        cm.feature_fn = previous
        cm.remove_expert(expert.name)
    result = {k: round(float(np.mean(v)), 3) for k, v in hits.items() if v}
    result["overall"] = round(float(np.mean([x for v in hits.values() for x in v])), 3)
    return result
