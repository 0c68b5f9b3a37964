"""Random Llama models and random experts built in-process (no download).

The one factory for everything that needs a model without weights to fetch: the
benchmark's Vicuna-7B-shaped runs, the tests' tiny models, and the untrained experts the
app and CLI tests load from folders. A random model answers nonsense; it exercises the
plumbing and the math (DESIGN.md §6: mergekit's and transformers' testers do the same).

    base = tiny_base()                                   # 2-layer Llama, hidden 32, byte tokenizer
    expert = random_expert(base, "image", "image", "decoupled", seed=1)
    save_random_experts(smollm2, tmp / "experts", ("image", "audio"))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .expert import EncoderRef, Expert, ExpertConfig, ProjectorSpec, save_expert
from .lora import LLAMA_TARGETS, LoraDelta

# The tiny test models: hidden 32 and an encoder stand-in of 16-d features.
HIDDEN = 32
FEATURE_DIM = 16

# modality -> (encoder kind, feature dim): the offline encoders of DESIGN.md §4, for experts saved to folders.
OFFLINE_ENCODERS = {
    "image": ("efficientnet-lite0", 1280),
    "audio": ("whisper-tiny.en", 384),
    "video": ("efficientnet-lite0-video", 1280),
    "point": ("point-fps-knn", 256),
}


@dataclass(frozen=True)
class ModelShape:
    """A Llama shape for a random-weight model. ``vocab`` 0 = the byte tokenizer's size."""

    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int = 0
    kv_heads: int | None = None  # None = heads (no grouped-query attention)
    max_positions: int = 4096


VICUNA_7B = ModelShape("Vicuna-7B-shaped (random)", 4096, 32, 32, 11008, 32000)
TINY = ModelShape("tiny Llama (random)", 64, 2, 4, 128, 512)
SMALL_GPU = ModelShape("small Llama (random)", 128, 2, 4, 344, 4096)
TEST = ModelShape("tiny-llama", HIDDEN, 2, 4, 64, kv_heads=2, max_positions=512)


@dataclass
class SyntheticBase:
    """What ComposedModel needs from a base, for a random Llama and a byte-level tokenizer."""

    model: torch.nn.Module
    tokenizer: object
    template: object
    eos_token_ids: list[int]
    name: str
    hidden_size: int
    sha256: str = "0" * 64
    load_seconds: dict = field(default_factory=dict)


def byte_tokenizer():
    """Byte-level BPE without merges: the 256 bytes plus <s>, </s>, <pad> (ids < 259)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in ("<s>", "</s>", "<pad>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def synthetic_base(shape: ModelShape, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   seed: int = 0) -> SyntheticBase:
    """A random-weight Llama of ``shape`` built directly on ``device`` in ``dtype`` (``meta`` builds no memory)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from .templates import get_template

    tokenizer = byte_tokenizer()
    config = LlamaConfig(vocab_size=max(shape.vocab, len(tokenizer)), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads or shape.heads, max_position_embeddings=shape.max_positions,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    return SyntheticBase(model, tokenizer, get_template("vicuna_v1"), [tokenizer.eos_token_id], shape.name, shape.hidden)


def tiny_base(seed: int = 0) -> SyntheticBase:
    """The tests' base: a 2-layer Llama, hidden 32, grouped-query attention, byte tokenizer, fp32 on CPU."""
    return synthetic_base(TEST, seed=seed)


def linear_shapes(model: torch.nn.Module, targets: Sequence[str] = LLAMA_TARGETS) -> dict[str, tuple[int, int]]:
    """(out, in) of every linear layer named in ``targets``, also when a composed model has
    wrapped them (RoutedLinear keeps the frozen layer as ``.base``)."""
    shapes = {}
    for name, module in model.named_modules():
        layer = getattr(module, "base", module)
        if isinstance(layer, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            shapes[name] = (layer.out_features, layer.in_features)
    if not shapes:
        raise ValueError(f"the model has no linear layers named {tuple(targets)}; random experts need them.")
    return shapes


def random_delta(shapes: dict[str, tuple[int, int]], r: int, generator: torch.Generator, std: float = 0.3) -> LoraDelta:
    """A LoRA delta with N(0, std²) factors on every layer of ``shapes`` (alpha = 2r, so s = 2)."""
    a = {m: torch.randn(r, fin, generator=generator) * std for m, (fout, fin) in shapes.items()}
    b = {m: torch.randn(fout, r, generator=generator) * std for m, (fout, fin) in shapes.items()}
    return LoraDelta(r, 2.0 * r, a, b)


def random_expert(base, name: str, modality: str, training: str, seed: int, r: int = 4,
                  prefix: int = 2, suffix: int = 1) -> Expert:
    """A test expert: large random deltas on every Llama linear layer, an mlp2x_gelu projector of
    ``FEATURE_DIM``-d features (the ``precomputed`` encoder: inputs already are features)."""
    g = torch.Generator().manual_seed(seed)
    shapes = linear_shapes(base.model)
    names = ("shared",) if training == "shared" else ("text", "modality")
    deltas = {n: random_delta(shapes, r, g) for n in names}
    hidden = base.model.get_input_embeddings().weight.shape[1]
    config = ExpertConfig(name=name, modality=modality, training=training, base_model_name=base.name,
                          base_model_sha256=base.sha256, encoder=EncoderRef("precomputed", None, FEATURE_DIM),
                          projector=ProjectorSpec("mlp2x_gelu", FEATURE_DIM, hidden), prefix_tokens=prefix, suffix_tokens=suffix)
    projector = config.projector.build()
    with torch.no_grad():
        for p in projector.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return Expert(config, deltas, projector, torch.randn(prefix, hidden, generator=g), torch.randn(suffix, hidden, generator=g))


def random_experts_of_both_kinds(base, modalities: Sequence[str], seed: int) -> list[Expert]:
    """A decoupled expert (named after its modality) and a shared one (``<modality>-shared``) per modality;
    expert ``i`` of kind ``j`` (0 decoupled, 1 shared) is drawn with seed ``seed + 10 i + j``."""
    return [random_expert(base, m + suffix, m, kind, seed=seed + 10 * i + j)
            for j, (kind, suffix) in enumerate((("decoupled", ""), ("shared", "-shared")))
            for i, m in enumerate(modalities)]


def scaled_random_expert(base, modality: str, training: str, *, rank: int, targets: Sequence[str], encoder: tuple[str, int],
                         boundary_tokens: int, seed: int) -> Expert:
    """An untrained expert initialised like a trained LoRA (A ~ 1/√in, B small), made on the base's
    device and dtype: the benchmark's experts, whose outputs stay in the base's range at any size."""
    weight = base.model.get_input_embeddings().weight
    shapes = linear_shapes(base.model, targets)
    g = torch.Generator(device=weight.device).manual_seed(seed)

    def factor(*size, std):
        return torch.randn(*size, generator=g, device=weight.device, dtype=weight.dtype) * std

    def delta():
        return LoraDelta(rank, 2.0 * rank, {m: factor(rank, fin, std=fin ** -0.5) for m, (fout, fin) in shapes.items()},
                         {m: factor(fout, rank, std=0.01 / rank ** 0.5) for m, (fout, fin) in shapes.items()})

    hidden = weight.shape[1]
    name = modality if training == "decoupled" else f"{modality}-shared"
    config = ExpertConfig(name=name, modality=modality, training=training, base_model_name=base.name,
                          base_model_sha256=base.sha256, encoder=EncoderRef(encoder[0], None, encoder[1]),
                          projector=ProjectorSpec("linear", encoder[1], hidden),
                          prefix_tokens=boundary_tokens, suffix_tokens=boundary_tokens)
    projector = config.projector.build()
    with torch.no_grad():
        projector[0].weight.mul_(0.05)
    deltas = {n: delta() for n in config.delta_names}
    cpu = torch.Generator().manual_seed(seed)
    prefix, suffix = (torch.randn(boundary_tokens, hidden, generator=cpu) * 0.01 for _ in range(2))
    return Expert(config, deltas, projector, prefix, suffix)


def save_random_experts(base, folder: Path, modalities: Sequence[str] = ("image", "audio"), training: str = "decoupled",
                        seed: int = 0) -> Path:
    """One untrained expert per modality (LoRA r=4 on q_proj and v_proj, the offline encoders)
    under ``folder/<modality>``: plumbing for the app, CLI and MCUB tests, not quality."""
    shapes = linear_shapes(base.model, ("q_proj", "v_proj"))
    g = torch.Generator().manual_seed(seed)
    names = ("shared",) if training == "shared" else ("text", "modality")
    for modality in modalities:
        kind, dim = OFFLINE_ENCODERS[modality]
        config = ExpertConfig(name=modality, modality=modality, training=training, base_model_name=base.name,
                              base_model_sha256=base.sha256, encoder=EncoderRef(kind, None, dim),
                              projector=ProjectorSpec("linear", dim, base.hidden_size))
        projector = config.projector.build()
        with torch.no_grad():
            projector[0].weight.mul_(0.05)
        deltas = {n: random_delta(shapes, 4, g, std=0.02) for n in names}
        hidden = base.hidden_size
        save_expert(Expert(config, deltas, projector, torch.zeros(0, hidden), torch.zeros(0, hidden)), Path(folder) / modality)
    return Path(folder)


def features_as_data(expert, item) -> torch.Tensor:
    """The tiny experts' 'encoder' (a ComposedModel ``feature_fn``): inputs already are feature tensors."""
    return item.data


def pooled_features(expert, item) -> torch.Tensor:
    """A deterministic stand-in encoder for real loaded files of any modality: the tensor pooled to (4, FEATURE_DIM)."""
    flat = item.data.float().reshape(1, 1, -1)
    return torch.nn.functional.adaptive_avg_pool1d(flat, 4 * FEATURE_DIM).reshape(4, FEATURE_DIM) * 3.0


def random_features(n_tokens: int, seed: int, dim: int = FEATURE_DIM) -> torch.Tensor:
    return torch.randn(n_tokens, dim, generator=torch.Generator().manual_seed(seed))
