"""Synthetic ModelCompose checkpoints in the original's exact layout, at tiny sizes (no download).

Layout from THUNLP-MT/ModelCompose: modelcompose/train/train_multimodal.py (config.json +
adapter_model.bin of the trainable parameters), modelcompose/model/language_model/multimodal_llama.py
(LocalLoraLinear adapters 'default' + modality names, prefix/suffix_tokens.<name> [1, n, hidden]),
modelcompose/model/multimodal_projector/builder.py (modal_projectors.<m>.{0,2}, mlp2x_gelu) and
scripts/model_composition/merge_unimodal_modelcompose.py (default-<m>, reset_scaling_weights).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

TARGETS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
           ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))
FEATURES = {"vision": 24, "audio": 20, "video": 24, "point": 12}


def config(modalities, strategy, *, hidden=64, layers=2, heads=4, inter=128, r=4, alpha=8, prefix=2, suffix=1,
           reset=None) -> dict:
    cfg = {"architectures": ["MultimodalLlamaForCausalLM"], "model_type": "multimodal_llama", "_name_or_path": "lmsys/vicuna-7b-v1.5",
           "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": heads, "lora_strategy": strategy, "lora_r": r, "lora_alpha": alpha,
           "local_prefix_tokens": prefix, "local_suffix_tokens": suffix, "mm_projector_type": "mlp2x_gelu"}
    for m in modalities:
        cfg[f"mm_{m}_encoder"] = f"{m}-encoder"
        cfg[f"mm_{m}_hidden_size"] = FEATURES[m]
    if reset:
        cfg["reset_scaling_weights"] = reset
    return cfg


def lora_shapes(proj, hidden, inter, r, kv_out=None):
    fin = inter if proj == "down_proj" else hidden
    fout = {"gate_proj": inter, "up_proj": inter, "k_proj": kv_out or hidden, "v_proj": kv_out or hidden}.get(proj, hidden)
    return (r, fin), (fout, r)


def weights(cfg: dict, adapters: list[str], modalities: list[str], seed: int, std: float = 0.2,
            device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor the original saves for this config: LoRA per adapter, projectors, boundary tokens."""
    g = torch.Generator().manual_seed(seed)
    h, inter, r = cfg["hidden_size"], cfg["intermediate_size"], cfg["lora_r"]

    def rand(*shape):
        if device == "meta":
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=g) * std

    out = {}
    for i in range(cfg["num_hidden_layers"]):
        for block, proj in TARGETS:
            a, b = lora_shapes(proj, h, inter, r)
            for name in adapters:
                out[f"model.layers.{i}.{block}.{proj}.lora_A.{name}.weight"] = rand(*a)
                out[f"model.layers.{i}.{block}.{proj}.lora_B.{name}.weight"] = rand(*b)
    for m in modalities:
        f = FEATURES[m]
        out.update({f"model.modal_projectors.{m}.0.weight": rand(h, f), f"model.modal_projectors.{m}.0.bias": rand(h),
                    f"model.modal_projectors.{m}.2.weight": rand(h, h), f"model.modal_projectors.{m}.2.bias": rand(h)})
    for name in ("default", *modalities):  # infer_modals returns 'default' first
        if cfg["local_prefix_tokens"]:
            out[f"prefix_tokens.{name}"] = rand(1, cfg["local_prefix_tokens"], h)
        if cfg["local_suffix_tokens"]:
            out[f"suffix_tokens.{name}"] = rand(1, cfg["local_suffix_tokens"], h)
    return out


def write(folder: Path, cfg: dict, tensors: dict) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.save(tensors, folder / "adapter_model.bin")
    return folder


def single(folder: Path, modality: str, strategy: str, seed: int = 0, **kw) -> Path:
    cfg = config([modality], strategy, **kw)
    adapters = ["default", modality] if strategy == "modal+language" else ["default"]
    return write(folder, cfg, weights(cfg, adapters, [modality], seed))


def merged(folder: Path, modalities: list[str], lambdas: dict, mus: dict, seed: int = 0) -> Path:
    """online-merge-reset-...: each expert's 'default' renamed default-<m>, scalings in reset_scaling_weights."""
    reset = ",".join([f"default-{m}={lambdas[m]}" for m in modalities] + [f"{m}={mus[m]}" for m in modalities])
    cfg = config(modalities, "modal+language", reset=reset)
    adapters = [f"default-{m}" for m in modalities] + list(modalities)
    return write(folder, cfg, weights(cfg, adapters, modalities, seed))


def audio_qformer(cfg: dict, seed: int = 5, *, width: int = 48, inter: int = 96, queries: int = 4, layers: int = 2,
                  positions: int = 64, std: float = 0.2) -> dict[str, torch.Tensor]:
    """The audio expert's Q-Former projector in the original's key names (builder.py VideoLlamaAudioQformer:
    BertLMHeadModel with cross-attention every layer, word/position embeddings and text FFN removed)."""
    g = torch.Generator().manual_seed(seed)
    f, h = cfg["mm_audio_hidden_size"], cfg["hidden_size"]
    cfg["mm_audio_projector_type"] = f"qformer_{queries}N_{layers}L"

    def rand(*shape):
        return torch.randn(*shape, generator=g) * std

    def norm(prefix):
        return {f"{prefix}.weight": 1 + rand(width), f"{prefix}.bias": rand(width)}

    q = "model.modal_projectors.audio."
    out = {**norm(q + "audio_Qformer.bert.embeddings.LayerNorm")}
    for i in range(layers):
        layer = f"{q}audio_Qformer.bert.encoder.layer.{i}."
        for block, kv_in in (("attention", width), ("crossattention", f)):
            out[f"{layer}{block}.self.query.weight"], out[f"{layer}{block}.self.query.bias"] = rand(width, width), rand(width)
            for name in ("key", "value"):
                out[f"{layer}{block}.self.{name}.weight"], out[f"{layer}{block}.self.{name}.bias"] = rand(width, kv_in), rand(width)
            out[f"{layer}{block}.output.dense.weight"], out[f"{layer}{block}.output.dense.bias"] = rand(width, width), rand(width)
            out.update(norm(f"{layer}{block}.output.LayerNorm"))
        out[f"{layer}intermediate_query.dense.weight"], out[f"{layer}intermediate_query.dense.bias"] = rand(inter, width), rand(inter)
        out[f"{layer}output_query.dense.weight"], out[f"{layer}output_query.dense.bias"] = rand(width, inter), rand(width)
        out.update(norm(f"{layer}output_query.LayerNorm"))
    out[q + "audio_query_tokens"] = rand(1, queries, width)
    out[q + "audio_position_embedding.weight"] = rand(positions, f)
    out[q + "audio_llama_proj.weight"], out[q + "audio_llama_proj.bias"] = rand(h, width), rand(h)
    return out


def audio_expert(folder: Path, strategy: str = "modal+language", seed: int = 0, **qformer) -> Path:
    """An audio checkpoint whose projector is the Q-Former (not mlp2x_gelu)."""
    cfg = config(["audio"], strategy)
    adapters = ["default", "audio"] if strategy == "modal+language" else ["default"]
    tensors = {k: v for k, v in weights(cfg, adapters, ["audio"], seed).items() if ".modal_projectors." not in k}
    tensors.update(audio_qformer(cfg, seed + 5, **qformer))
    return write(folder, cfg, tensors)
