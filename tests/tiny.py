"""Tiny random models built in the test process (no download): a 2-layer Llama with a
byte-level tokenizer, and random experts of both training kinds."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from composition.benchmark import byte_tokenizer  # the benchmark's tiny models use the same tokenizer
from composition.expert import EncoderRef, Expert, ExpertConfig, ProjectorSpec
from composition.lora import LoraDelta
from composition.templates import get_template

HIDDEN = 32
FEATURE_DIM = 16
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TinyBase:
    model: torch.nn.Module
    tokenizer: object
    template: object
    eos_token_ids: list[int]
    name: str = "tiny-llama"
    sha256: str = "0" * 64
    load_seconds: dict = field(default_factory=dict)


def tiny_base(seed: int = 0) -> TinyBase:
    torch.manual_seed(seed)
    tokenizer = byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    return TinyBase(model, tokenizer, get_template("vicuna_v1"), [tokenizer.eos_token_id])


def linear_shapes(model) -> dict[str, tuple[int, int]]:
    return {n: (m.out_features, m.in_features) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in TARGETS}


def random_delta(shapes: dict[str, tuple[int, int]], r: int, generator: torch.Generator, std: float = 0.3) -> LoraDelta:
    a = {m: torch.randn(r, fin, generator=generator) * std for m, (fout, fin) in shapes.items()}
    b = {m: torch.randn(fout, r, generator=generator) * std for m, (fout, fin) in shapes.items()}
    return LoraDelta(r, 2.0 * r, a, b)


def random_expert(base: TinyBase, name: str, modality: str, training: str, seed: int, r: int = 4,
                  prefix: int = 2, suffix: int = 1) -> Expert:
    g = torch.Generator().manual_seed(seed)
    shapes = linear_shapes(base.model)
    names = ("shared",) if training == "shared" else ("text", "modality")
    deltas = {n: random_delta(shapes, r, g) for n in names}
    config = ExpertConfig(name=name, modality=modality, training=training, base_model_name=base.name,
                          base_model_sha256=base.sha256, encoder=EncoderRef("precomputed", None, FEATURE_DIM),
                          projector=ProjectorSpec("mlp2x_gelu", FEATURE_DIM, HIDDEN), prefix_tokens=prefix, suffix_tokens=suffix)
    projector = config.projector.build()
    with torch.no_grad():
        for p in projector.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return Expert(config, deltas, projector, torch.randn(prefix, HIDDEN, generator=g), torch.randn(suffix, HIDDEN, generator=g))


def features_as_data(expert, item) -> torch.Tensor:
    """The tiny experts' 'encoder': inputs already are feature tensors."""
    return item.data


def random_features(n_tokens: int, seed: int) -> torch.Tensor:
    return torch.randn(n_tokens, FEATURE_DIM, generator=torch.Generator().manual_seed(seed))
