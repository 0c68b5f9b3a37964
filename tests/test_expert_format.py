"""The expert folder format: bit-exact round trip, peft compatibility, strict errors."""
from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from composition.errors import ExpertError
from composition.expert import load_expert, save_expert
from composition.random_models import linear_shapes, random_expert, tiny_base


@pytest.fixture(scope="module")
def base():
    return tiny_base()


@pytest.fixture
def saved(base, tmp_path):
    expert = random_expert(base, "image", "image", "decoupled", seed=1)
    return expert, save_expert(expert, tmp_path / "image")


def load(base, folder):
    return load_expert(folder, base_sha256=base.sha256, linear_shapes=linear_shapes(base.model), hidden_size=32)


@pytest.mark.parametrize("training", ["shared", "decoupled"])
def test_save_load_is_bit_exact(base, tmp_path, training):
    expert = random_expert(base, "audio", "audio", training, seed=2)
    loaded = load(base, save_expert(expert, tmp_path / "e"))
    assert loaded.config == expert.config
    for name, delta in expert.deltas.items():
        other = loaded.deltas[name]
        assert (other.r, other.alpha) == (delta.r, delta.alpha)
        for m in delta.modules:
            assert torch.equal(other.A[m], delta.A[m]) and torch.equal(other.B[m], delta.B[m])
    for (k, v), (k2, v2) in zip(expert.projector.state_dict().items(), loaded.projector.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert torch.equal(loaded.prefix, expert.prefix) and torch.equal(loaded.suffix, expert.suffix)


def test_text_adapter_loads_in_peft_and_matches_our_delta(base, saved):
    from peft import PeftModel

    expert, folder = saved
    model = tiny_base().model
    peft_model = PeftModel.from_pretrained(model, str(folder / "text"))
    name = "model.layers.0.self_attn.q_proj"
    peft_delta = peft_model.base_model.model.get_submodule(name).get_delta_weight("default")
    assert torch.allclose(peft_delta, expert.deltas["text"].dense(name), atol=1e-6)


def test_fp16_storage_halves_the_size(base, saved, tmp_path):
    expert, folder = saved
    small = save_expert(expert, tmp_path / "small", dtype=torch.float16)
    size = lambda d: sum(p.stat().st_size for p in d.rglob("*.safetensors"))  # noqa: E731
    assert size(small) < 0.6 * size(folder)
    assert load(base, small).deltas["text"].A[next(iter(expert.deltas["text"].A))].dtype == torch.float16


def corrupt(folder, how):
    weights = folder / "text" / "adapter_model.safetensors"
    if how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        weights.write_bytes(b"\x00" * 100)
    elif how == "missing_key":
        t = load_file(str(weights))
        t.pop(next(k for k in t if k.endswith("lora_B.weight")))
        save_file(t, str(weights))
    elif how == "unexpected_key":
        t = load_file(str(weights))
        t["base_model.model.model.layers.0.self_attn.q_proj.magnitude"] = torch.zeros(3)
        save_file(t, str(weights))
    elif how == "wrong_shape":
        t = load_file(str(weights))
        key = next(k for k in t if k.endswith("lora_A.weight"))
        t[key] = torch.zeros(t[key].shape[0], t[key].shape[1] + 1)
        save_file(t, str(weights))
    elif how == "unknown_modality":
        cfg = json.loads((folder / "expert.json").read_text())
        cfg["modality"] = "smell"
        (folder / "expert.json").write_text(json.dumps(cfg))
    elif how == "future_version":
        cfg = json.loads((folder / "expert.json").read_text())
        cfg["format_version"] = 99
        (folder / "expert.json").write_text(json.dumps(cfg))
    elif how == "bad_json":
        (folder / "expert.json").write_text("{not json")
    elif how == "wrong_types":
        cfg = json.loads((folder / "expert.json").read_text())
        cfg["prefix_tokens"] = "two"
        (folder / "expert.json").write_text(json.dumps(cfg))
    elif how == "missing_projector":
        (folder / "projector.safetensors").unlink()
    elif how == "projector_shape":
        t = load_file(str(folder / "projector.safetensors"))
        t["prefix"] = torch.zeros(5, 32)
        save_file(t, str(folder / "projector.safetensors"))
    elif how == "missing_adapter":
        shutil.rmtree(folder / "modality")


CASES = {
    "truncated": "adapter text/: text/adapter_model.safetensors is not a readable safetensors file",
    "garbage": "not a readable safetensors file",
    "missing_key": "do not pair up",
    "unexpected_key": "unexpected key",
    "wrong_shape": "base layer is",
    "unknown_modality": "modality 'smell' is unknown",
    "future_version": "format_version 99 is not supported",
    "bad_json": "expert.json is not valid JSON",
    "wrong_types": "prefix_tokens='two'",
    "missing_projector": "projector.safetensors is missing",
    "projector_shape": "prefix tokens have shape",
    "missing_adapter": "adapter_config.json is missing",
}


@pytest.mark.parametrize("how", sorted(CASES))
def test_corrupt_expert_gives_a_clear_error(base, saved, how):
    _, folder = saved
    corrupt(folder, how)
    with pytest.raises(ExpertError) as info:
        load(base, folder)
    message = str(info.value)
    assert CASES[how] in message
    assert "'image'" in message  # names the expert folder
    assert str(folder.parent) not in message  # never the server path


def test_base_mismatch_warns_but_loads(base, saved):
    _, folder = saved
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_expert(folder, base_sha256="f" * 64)
    assert any("was trained on base" in str(w.message) for w in caught)


def test_fetch_expert_local_and_offline_hub(saved, monkeypatch, tmp_path):
    import huggingface_hub.constants

    from composition.fetch import fetch_expert

    _, folder = saved
    assert fetch_expert(str(folder)) == folder
    with pytest.raises(ExpertError, match="no expert.json inside"):
        fetch_expert(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ExpertError, match="could not download expert 'nobody-xyz/no-such-expert'"):
        fetch_expert("nobody-xyz/no-such-expert", cache_dir=tmp_path / "hub")
    with pytest.raises(ExpertError, match="neither an existing folder nor a hub id"):
        fetch_expert("justaname")


@pytest.mark.parametrize("patterns", [{"rank_pattern": {"q_proj": 2, r"layers\.1\.mlp\.down_proj": 6}},
                                      {"alpha_pattern": {"v_proj": 32.0, "o_proj": 1.0}},
                                      {"rank_pattern": {"k_proj": 3}, "alpha_pattern": {"k_proj": 9.0, "up_proj": 2.5}}])
def test_rank_and_alpha_patterns_give_the_delta_peft_computes(base, tmp_path, patterns):
    """An adapter saved by peft with per-module ranks or alphas loads to exactly peft's ΔW of every module."""
    from peft import LoraConfig, get_peft_model

    from composition.lora import load_lora

    torch.manual_seed(0)
    model = get_peft_model(copy_of(base.model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                            "o_proj", "up_proj", "down_proj"],
                                                           **patterns))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.save_pretrained(tmp_path / "adapter")
    delta = load_lora(tmp_path / "adapter", what="adapter")
    peft_layers = {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if hasattr(m, "get_delta_weight")}
    assert set(delta.modules) == set(peft_layers)
    ranks = {m: layer.r["default"] for m, layer in peft_layers.items()}
    assert len(set(ranks.values())) > 1 or len({layer.scaling["default"] for layer in peft_layers.values()}) > 1
    for module, layer in peft_layers.items():
        torch.testing.assert_close(delta.dense(module), layer.get_delta_weight("default").float(), rtol=1e-5, atol=1e-6)


def copy_of(model):
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize("field, value, message", [
    ("rank_pattern", {"q_proj": 0}, r"rank_pattern\['q_proj'\]"),
    ("alpha_pattern", ["v_proj"], "alpha_pattern must be a mapping"),
    ("rank_pattern", {"q_proj": 3}, r"rank from adapter_config.json \(rank_pattern\) is 3"),
])
def test_bad_patterns_are_refused_naming_the_field(base, saved, field, value, message):
    _, folder = saved
    config_path = folder / "text" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config[field] = value
    config_path.write_text(json.dumps(config))
    with pytest.raises(ExpertError, match=message):
        load(base, folder)
