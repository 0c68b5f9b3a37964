"""The engine on the real offline base model (SmolLM2-135M-Instruct)."""
from __future__ import annotations

import pytest
import torch

from composition.composer import ComposedModel
from composition.expert import EncoderRef, Expert, ExpertConfig, ProjectorSpec
from composition.generate import GenerationConfig
from composition.lora import LoraDelta

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France?"


def zero_expert(base, name, modality, training, shapes):
    names = ("shared",) if training == "shared" else ("text", "modality")
    config = ExpertConfig(name=name, modality=modality, training=training, base_model_name=base.name,
                          base_model_sha256=base.sha256, encoder=EncoderRef("precomputed", None, 8),
                          projector=ProjectorSpec("linear", 8, base.hidden_size))
    deltas = {n: LoraDelta.zeros_like_modules(shapes, 4, 8.0) for n in names}
    return Expert(config, deltas, config.projector.build(), torch.zeros(0, base.hidden_size), torch.zeros(0, base.hidden_size))


def test_zero_delta_experts_generate_exactly_what_the_base_generates(smollm2, base_cache_dir):
    from composition.base_llm import load_base_llm

    # A base of its own: the composed model wraps the base's layers for good, and the
    # session's smollm2 must stay plain for the tests that run after this one (smollm2 is
    # requested only so the converted base is already in the cache: this load is quick).
    base = load_base_llm(cache_dir=base_cache_dir)
    prompt = base.template.format_prompt(QUESTION)
    ids = base.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        reference = base.model.generate(**ids, max_new_tokens=24, do_sample=False, eos_token_id=base.eos_token_ids)
    reference = reference[0, ids["input_ids"].shape[1]:].tolist()
    reference = [t for t in reference if t not in base.eos_token_ids]
    shapes = {n: (m.out_features, m.in_features) for n, m in base.model.named_modules()
              if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in ("q_proj", "v_proj", "down_proj")}
    experts = [zero_expert(base, "image", "image", "decoupled", shapes), zero_expert(base, "audio", "audio", "decoupled", shapes),
               zero_expert(base, "image-shared", "image", "shared", shapes)]
    cm = ComposedModel(base, experts, feature_fn=lambda e, x: x.data)
    try:
        answers = cm.compare(QUESTION, [], ["DAMC", "NaiveMC", "expert:audio"], config=GenerationConfig(max_new_tokens=24))
        assert "Paris" in answers[0].answer
        for answer in answers:
            assert answer.token_ids == reference, answer.name
    finally:
        cm.dematerialize()
