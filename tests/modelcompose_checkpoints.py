"""Synthetic ModelCompose checkpoints in the original's exact layout, at tiny sizes (no download).

Layout from THUNLP-MT/ModelCompose: modelcompose/train/train_multimodal.py (config.json +
adapter_model.bin of the trainable parameters), modelcompose/model/language_model/multimodal_llama.py
(LocalLoraLinear adapters 'default' + modality names, prefix/suffix_tokens.<name> [1, n, hidden]),
modelcompose/model/multimodal_projector/builder.py (modal_projectors.<m>.{0,2}, mlp2x_gelu) and
scripts/model_composition/merge_unimodal_modelcompose.py (default-<m>, reset_scaling_weights), whose
online-merge branch `merge_like_the_script` follows rule by rule. Every folder also holds the
trainer_state.json that transformers' Trainer leaves beside a checkpoint (the hub's folders have one).
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
    (folder / "trainer_state.json").write_text(json.dumps(TRAINER_STATE))
    return folder


# What transformers' Trainer writes beside a checkpoint (abridged); the importer ignores it.
TRAINER_STATE = {"best_metric": None, "best_model_checkpoint": None, "epoch": 1.0, "global_step": 2, "is_hyper_param_search": False,
                 "is_local_process_zero": True, "is_world_process_zero": True, "max_steps": 2, "num_train_epochs": 1,
                 "log_history": [{"epoch": 0.5, "learning_rate": 2e-4, "loss": 1.25, "step": 1},
                                 {"epoch": 1.0, "learning_rate": 0.0, "loss": 1.0, "step": 2}], "total_flos": 0.0}


def single(folder: Path, modality: str, strategy: str, seed: int = 0, **kw) -> Path:
    cfg = config([modality], strategy, **kw)
    adapters = ["default", modality] if strategy == "modal+language" else ["default"]
    return write(folder, cfg, weights(cfg, adapters, [modality], seed))


# scripts/model_composition/merge_unimodal_modelcompose.py MODAL_DICT, in its order (get_modal_from_config).
MODAL_KEYS = (("mm_vision_encoder", "vision"), ("mm_vision_tower", "vision"), ("mm_vision2_encoder", "vision2"),
              ("mm_vision2_tower", "vision2"), ("mm_video_encoder", "video"), ("mm_audio_encoder", "audio"),
              ("mm_point_encoder", "point"))


def modal_of(cfg: dict) -> str:
    """get_modal_from_config: the first MODAL_KEYS key set to a non-empty string."""
    for key, name in MODAL_KEYS:
        if isinstance(cfg.get(key), str) and cfg[key]:
            return name
    raise ValueError("no modality is recognised in the config")


def merge_like_the_script(inputs: list[Path], out: Path, strategy: str) -> Path:
    """What `merge_unimodal_modelcompose.py IN... -o OUT --strategy online-merge-...` writes, by its rules:

    * every input's adapter_model.bin (else mm_projector.bin) and config.json are read in order; tensors
      are collected per key in the order keys first appear;
    * a key held by one input keeps its name; a key held by several (it must contain 'default') is
      written once per holder as `key.replace('default', 'default-<m>')`, the i-th holder's tensor paired
      with the i-th input's modality (its `zip`);
    * config.json: every input's keys, a key's first truthy value winning (`a or b`); after the first
      input, 'online-merge-' is stripped from the strategy and the rest, 'reset-' removed, becomes
      reset_scaling_weights (or merge_default_weights without 'reset-'); then `<m>_lora_alpha` and
      `<m>_lora_r` per input; written with indent=4;
    * merge_info.txt names the inputs and the output.
    """
    if not strategy.startswith("online-merge-"):
        raise ValueError("only the online-merge strategies (the original's documented evaluation path) are modelled here")
    configs, collected = [], {}
    for folder in inputs:
        folder = Path(folder)
        path = folder / "adapter_model.bin" if (folder / "adapter_model.bin").exists() else folder / "mm_projector.bin"
        tensors = torch.load(path, map_location="cpu", weights_only=True)
        configs.append(json.loads((folder / "config.json").read_text()))
        for key, value in tensors.items():
            collected.setdefault(key, []).append(value)
    names = [modal_of(cfg) for cfg in configs]
    merged = {}
    for key, values in collected.items():
        if len(values) == 1:
            merged[key] = values[0]
            continue
        if "default" not in key:
            raise AssertionError(f"{key} is held by several inputs but is not a 'default' key (the script asserts this)")
        for name, value in zip(names, values):
            merged[key.replace("default", f"default-{name}")] = value
    merged_config: dict = {}
    rest = strategy
    for cfg in configs:
        for key, value in cfg.items():
            merged_config[key] = (merged_config[key] or value) if key in merged_config else value
        if rest.startswith("online-merge-"):
            rest = rest.replace("online-merge-", "")
            if rest.startswith("reset-"):
                merged_config["reset_scaling_weights"] = rest.replace("reset-", "")
            else:
                merged_config["merge_default_weights"] = rest
    for cfg in configs:
        name = modal_of(cfg)
        merged_config[f"{name}_lora_alpha"] = cfg["lora_alpha"]
        merged_config[f"{name}_lora_r"] = cfg["lora_r"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(merged, out / "adapter_model.bin")
    (out / "config.json").write_text(json.dumps(merged_config, indent=4))
    listed = "\n".join(str(p) for p in inputs)
    (out / "merge_info.txt").write_text(f"Inputs:\n{listed}\n\nOutput({rest}):{out}")
    return out


def damc_experts(folder: Path, modalities: list[str], seed: int = 0) -> list[Path]:
    """One DAMC checkpoint per modality (the audio one with its Q-Former), named as on the hub."""
    folder = Path(folder)
    out = []
    for i, m in enumerate(modalities):
        target = folder / f"multimodal-vicuna-7b-v1.5-{m}-damc"
        out.append(audio_expert(target, seed=seed + i) if m == "audio" else single(target, m, "modal+language", seed=seed + i))
    return out


def merged(folder: Path, modalities: list[str], lambdas: dict, mus: dict, seed: int = 0) -> Path:
    """The merge script's online-merge-reset-... over one DAMC checkpoint per modality (written beside
    `folder` in `<folder>-inputs/`), with λ for default-<m> and μ for <m> in the strategy."""
    folder = Path(folder)
    inputs = damc_experts(folder.parent / f"{folder.name}-inputs", modalities, seed)
    strategy = "online-merge-reset-" + ",".join([f"default-{m}={lambdas[m]}" for m in modalities]
                                               + [f"{m}={mus[m]}" for m in modalities])
    return merge_like_the_script(inputs, folder, strategy)


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
