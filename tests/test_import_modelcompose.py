"""Importing the paper's released ModelCompose checkpoints (composition/importers/modelcompose.py).

Checkpoints are written by tests/modelcompose_checkpoints.py in the original layout at tiny sizes;
each import is composed and checked against a direct computation of the original routing
(LocalLoraLinear: W x + s·B_a·A_a x with the adapter a chosen per token, s = alpha/r).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from composition.composer import ComposedModel
from composition.inputs import ModalInput
from composition.expert import load_expert
from composition.random_models import ModelShape, features_as_data, synthetic_base
from composition.generate import GenerationConfig
from composition.importers import ImportError_, import_modelcompose
from composition.importers.modelcompose import build_experts, convert
from composition.prompt import build_prompt_row, user_message
from composition.variants import Coefficients, TEXT_ROUTE
from tests import modelcompose_checkpoints as mc

SHAPE = ModelShape("tiny-mc", 64, 2, 4, 128)
QUESTION = "What is it?"
OURS = {"vision": "image", "audio": "audio", "video": "video", "point": "point"}


@pytest.fixture
def base():
    return synthetic_base(SHAPE, seed=3)


def fresh():
    """The same random base, unwrapped (ComposedModel wraps its base's linear layers in place)."""
    return synthetic_base(SHAPE, seed=3)


def features(m, n=5, seed=1):
    return torch.randn(n, mc.FEATURES[m], generator=torch.Generator().manual_seed(seed))


def reference_logits(_, tensors, cfg, route_adapters, modality, feats, scalings=None):
    """The original's forward, written directly from the checkpoint tensors.

    route_adapters: route ("text" or our modality) -> [(adapter name, factor)] applied on that route's tokens.
    """
    base = fresh()
    s = cfg["lora_alpha"] / cfg["lora_r"]
    p = f"model.modal_projectors.{modality}."
    proj = torch.nn.functional.gelu(feats @ tensors[p + "0.weight"].T + tensors[p + "0.bias"]) @ tensors[p + "2.weight"].T + tensors[p + "2.bias"]
    block = torch.cat([tensors[f"prefix_tokens.{modality}"][0], proj, tensors[f"suffix_tokens.{modality}"][0]])
    ours = OURS[modality]
    prompt = base.template.format_prompt(user_message(QUESTION, [ours]))
    row = build_prompt_row(prompt, {ours: [block]}, base.tokenizer, base.model.get_input_embeddings())
    masks = {r: torch.tensor([x == r for x in row.routes]) for r in route_adapters}
    hooks = []
    for name, module in base.model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers."):
            def hook(mod, inp, out, name=name):
                x = inp[0]
                extra = torch.zeros_like(out)
                for route, adapters in route_adapters.items():
                    for adapter, factor in adapters:
                        a = tensors[f"{name}.lora_A.{adapter}.weight"]
                        b = tensors[f"{name}.lora_B.{adapter}.weight"]
                        extra = extra + masks[route][None, :, None] * (factor * s * (x @ a.T @ b.T))
                return out + extra
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            return base.model(inputs_embeds=row.embeds[None]).logits[0]
    finally:
        for h in hooks:
            h.remove()


def load(path):
    return torch.load(Path(path) / "adapter_model.bin", weights_only=True), json.loads((Path(path) / "config.json").read_text())


@pytest.mark.parametrize("modality", ["vision", "video", "point"])
def test_decoupled_expert_alone_matches_original_routing(tmp_path, base, modality):
    src = mc.single(tmp_path / f"{modality}-damc", modality, "modal+language", seed=7)
    (folder,) = import_modelcompose([str(src)], tmp_path / "out")
    expert = load_expert(folder)
    assert expert.training == "decoupled" and expert.modality == OURS[modality]
    info = json.loads((folder / "expert.json").read_text())
    assert info["source"] == str(src) and info["prefix_tokens"] == 2 and info["suffix_tokens"] == 1
    assert info["encoder"]["kind"] == {"vision": "clip", "video": "languagebind-video", "point": "point-bert"}[modality]
    cm = ComposedModel(base, [expert], feature_fn=features_as_data)
    feats = features(modality)
    got = cm.logits(QUESTION, [ModalInput(OURS[modality], feats)], [f"expert:{expert.name}"])[0]
    tensors, cfg = load(src)
    want = reference_logits(base, tensors, cfg, {TEXT_ROUTE: [("default", 1.0)], OURS[modality]: [(modality, 1.0)]}, modality, feats)
    assert (got - want).abs().max() < 1e-4
    # The text delta on modality tokens would be wrong: the check can fail.
    wrong = reference_logits(base, tensors, cfg, {TEXT_ROUTE: [("default", 1.0)], OURS[modality]: [("default", 1.0)]}, modality, feats)
    assert (got - wrong).abs().max() > 1e-3


def test_naivemc_over_imported_shared_experts_is_mean_of_dense_deltas(tmp_path, base):
    srcs = [mc.single(tmp_path / m, m, "same", seed=i) for i, m in enumerate(("vision", "video"))]
    folders = import_modelcompose([str(s) for s in srcs], tmp_path / "out")
    experts = [load_expert(f) for f in folders]
    assert {e.training for e in experts} == {"shared"} and {e.name for e in experts} == {"mc-image-shared", "mc-video-shared"}
    cm = ComposedModel(base, experts, feature_fn=features_as_data)
    inputs = [ModalInput("image", features("vision")), ModalInput("video", features("video", seed=2))]
    got = cm.logits(QUESTION, inputs, ["NaiveMC"])[0]
    # Direct: every token uses W + mean of the two dense deltas.
    t0, cfg = load(srcs[0])
    t1, _ = load(srcs[1])
    s = cfg["lora_alpha"] / cfg["lora_r"]
    blocks = {}
    for t, m in ((t0, "vision"), (t1, "video")):
        p = f"model.modal_projectors.{m}."
        f = inputs[0].data if m == "vision" else inputs[1].data
        proj = torch.nn.functional.gelu(f @ t[p + "0.weight"].T + t[p + "0.bias"]) @ t[p + "2.weight"].T + t[p + "2.bias"]
        blocks[OURS[m]] = [torch.cat([t[f"prefix_tokens.{m}"][0], proj, t[f"suffix_tokens.{m}"][0]])]
    base = fresh()
    prompt = base.template.format_prompt(user_message(QUESTION, ["image", "video"]))
    row = build_prompt_row(prompt, blocks, base.tokenizer, base.model.get_input_embeddings())
    hooks = []
    for name, module in base.model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers."):
            dense = sum(s * t[f"{name}.lora_B.default.weight"] @ t[f"{name}.lora_A.default.weight"] for t in (t0, t1)) / 2
            hooks.append(module.register_forward_hook(lambda mod, inp, out, d=dense: out + inp[0] @ d.T))
    with torch.no_grad():
        want = base.model(inputs_embeds=row.embeds[None]).logits[0]
    for h in hooks:
        h.remove()
    assert (got - want).abs().max() < 1e-4


def test_merged_checkpoint_imports_as_its_experts_with_lambdas_and_mus(tmp_path, base):
    lambdas, mus = {"vision": 0.6, "point": 0.4}, {"vision": 1.0, "point": 0.8}
    src = mc.merged(tmp_path / "merged", ["vision", "point"], lambdas, mus, seed=5)
    folders = import_modelcompose([str(src)], tmp_path / "out")
    assert sorted(f.name for f in folders) == ["mc-image", "mc-point"]
    side = json.loads((tmp_path / "out" / "composition.json").read_text())
    assert side["lambdas"] == {"mc-image": 0.6, "mc-point": 0.4} and side["mus"] == {"image": 1.0, "point": 0.8}
    experts = [load_expert(f) for f in folders]
    cm = ComposedModel(base, experts, feature_fn=features_as_data)
    feats = features("point")
    coef = Coefficients(lambdas={"mc-image": 0.6, "mc-point": 0.4}, mus={"point": 0.8})
    # Text-only DAMC would drop the image expert; one point input: DAMC over the point expert alone (λ, μ as merged).
    got = cm.logits(QUESTION, [ModalInput("point", feats)], ["DAMC"], coef)[0]
    tensors, cfg = load(src)
    want = reference_logits(base, tensors, cfg, {TEXT_ROUTE: [("default-point", 0.4)], "point": [("point", 0.8)]}, "point", feats)
    assert (got - want).abs().max() < 1e-4


def test_audio_qformer_and_default_tokens(tmp_path):
    src = mc.single(tmp_path / "a", "vision", "modal+language")
    tensors, cfg = load(src)
    experts, _ = convert(src, "x")  # prefix_tokens.default is accepted (checked) and not written
    assert experts[0].prefix.shape == (2, 64)
    tensors["model.modal_projectors.vision.audio_query_tokens"] = torch.zeros(1, 32, 768)
    mc.write(src, cfg, tensors)
    with pytest.raises(ImportError_, match="unrecognised|Q-Former"):
        import_modelcompose([str(src)], tmp_path / "out")


# --- full size, no memory ------------------------------------------------------------------------
def test_vicuna_7b_r128_key_and_shape_set_is_accepted_exactly():
    """The key set: for every layer of Vicuna-7B (32, hidden 4096, intermediate 11008) the seven
    LocalLoraLinear targets x {lora_A, lora_B} x adapters ('default' + the modality for
    modal+language), the mlp2x_gelu projector, prefix/suffix tokens for infer_modals' names: what
    get_peft_state_maybe_zero_3 + non-LoRA trainables of train_multimodal.py save. Tensors on meta."""
    from composition.importers.modelcompose import read_shape

    cfg = mc.config(["vision"], "modal+language", hidden=4096, layers=32, heads=32, inter=11008, r=128, alpha=256, prefix=5, suffix=5)
    cfg["mm_vision_hidden_size"] = 1024
    shape = read_shape(cfg, "vicuna")
    old = dict(mc.FEATURES)
    mc.FEATURES["vision"] = 1024
    try:
        tensors = mc.weights(cfg, ["default", "vision"], ["vision"], 0, device="meta")
    finally:
        mc.FEATURES.update(old)
    # 32 layers x 7 targets x {A, B} x {default, vision} + 4 projector tensors + prefix/suffix x {default, vision}
    assert len(tensors) == 32 * 7 * 2 * 2 + 4 + 4
    assert all(t.device.type == "meta" for t in tensors.values())
    build_experts(cfg, tensors, "vicuna-7b-meta", validate_only=True)  # accepted: every key and shape
    assert shape.lora("down_proj") == ((128, 11008), (4096, 128))
    # ... exactly: one key more (layer 32 does not exist), one less, or one shape off is refused.
    extra = dict(tensors, **{"model.layers.32.mlp.down_proj.lora_A.vision.weight": torch.empty(128, 11008, device="meta")})
    with pytest.raises(ImportError_, match="unrecognised"):
        build_experts(cfg, extra, "x", validate_only=True)
    fewer = dict(tensors)
    fewer.pop("model.layers.31.mlp.down_proj.lora_B.vision.weight")
    with pytest.raises(ImportError_, match="missing"):
        build_experts(cfg, fewer, "x", validate_only=True)
    off = dict(tensors, **{"model.layers.5.self_attn.k_proj.lora_B.default.weight": torch.empty(4096, 64, device="meta")})
    with pytest.raises(ImportError_, match="shape"):
        build_experts(cfg, off, "x", validate_only=True)


# --- hostile checkpoints -----------------------------------------------------------------------
class Tripwire:
    def __reduce__(self):
        return (os.system, (f"touch {TRIP}",))


TRIP = ""


def test_code_running_pickle_is_refused_and_never_runs(tmp_path):
    global TRIP
    TRIP = str(tmp_path / "tripped")
    src = mc.single(tmp_path / "evil", "vision", "same")
    torch.save({"x": Tripwire()}, src / "adapter_model.bin")
    with pytest.raises(ImportError_, match="needs code to unpickle"):
        import_modelcompose([str(src)], tmp_path / "out")
    assert not Path(TRIP).exists()
    assert not (tmp_path / "out").exists() or not any(p for p in (tmp_path / "out").iterdir())


def _broken(tmp_path, change, strategy="modal+language"):
    src = mc.single(tmp_path / "src", "vision", strategy)
    tensors, cfg = load(src)
    change(tensors, cfg)
    mc.write(src, cfg, tensors)
    with pytest.raises(ImportError_) as info:
        import_modelcompose([str(src)], tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    return str(info.value)


KEY = "model.layers.1.mlp.up_proj.lora_A.vision.weight"


def test_wrong_shape(tmp_path):
    msg = _broken(tmp_path, lambda t, c: t.__setitem__(KEY, torch.zeros(4, 63)))
    assert KEY in msg and "(4, 64)" in msg


def test_missing_factor(tmp_path):
    msg = _broken(tmp_path, lambda t, c: t.pop("model.layers.0.self_attn.k_proj.lora_B.default.weight"))
    assert "lora_B.default" in msg and "k_proj" in msg


def test_unknown_key(tmp_path):
    msg = _broken(tmp_path, lambda t, c: t.__setitem__("model.extra_head.weight", torch.zeros(2)))
    assert "model.extra_head.weight" in msg


def test_nan(tmp_path):
    def poison(t, c):
        t[KEY][0, 0] = float("nan")
    assert "NaN" in _broken(tmp_path, poison)


def test_strategy_contradicting_keys(tmp_path):
    def to_same(t, c):
        c["lora_strategy"] = "same"
    assert "contradicts" in _broken(tmp_path, to_same)

    def to_decoupled(t, c):
        c["lora_strategy"] = "modal+language"
    msg = _broken(tmp_path / "b", to_decoupled, strategy="same")
    assert "lora_A.vision" in msg


@pytest.mark.slow
def test_cli_imports_and_errors_exit_2(tmp_path):
    src = mc.single(tmp_path / "ok", "vision", "modal+language")
    run = lambda *a: subprocess.run([sys.executable, "-m", "composition", "import", "modelcompose", *a],
                                    capture_output=True, text=True, cwd=Path(__file__).parents[1])
    ok = run(str(src), "--out", str(tmp_path / "out"))
    assert ok.returncode == 0 and (tmp_path / "out" / "mc-image" / "expert.json").is_file()
    bad = run(str(tmp_path / "nothing"), "--out", str(tmp_path / "out2"))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("error:")


# --- the preset ----------------------------------------------------------------------------------
def test_preset_refuses_clearly_without_gpu_or_hub_and_plans_with_them():
    from studio.presets import PresetError, preset_name, resolve_preset

    with pytest.raises(PresetError, match="needs a CUDA GPU"):
        resolve_preset("modelcompose", {}, cuda_available=lambda: False, hub_reachable=lambda: True)
    with pytest.raises(PresetError, match="cannot reach"):
        resolve_preset("modelcompose", {}, cuda_available=lambda: True, hub_reachable=lambda: False)
    # No set-up: the four DAMC experts of the hub repository.
    plan = resolve_preset("modelcompose", {}, cuda_available=lambda: True, hub_reachable=lambda: True)
    assert plan.expert_sources == tuple(f"Adu2021/ModelCompose:multimodal-vicuna-7b-v1.5-{m}-damc"
                                        for m in ("vision", "audio", "video", "point"))
    assert plan.dtype == "bfloat16" and plan.base == "lmsys/vicuna-7b-v1.5" and not plan.zero_gpu
    # Offline the hub is not pinged: the files must be in its cache (tests/test_preset_hub_cache.py).
    offline = resolve_preset("modelcompose", {"HF_HUB_OFFLINE": "1"}, cuda_available=lambda: True,
                             hub_reachable=lambda: pytest.fail("pinged the hub while offline"))
    assert offline.expert_sources == plan.expert_sources
    env = {"STUDIO_MODELCOMPOSE_EXPERTS": "vision-damc, audio-naivemc,multimodal-vicuna-7b-v1.5-point-damc"}
    chosen = resolve_preset("modelcompose", env, cuda_available=lambda: True, hub_reachable=lambda: True)
    assert chosen.expert_sources == tuple(f"Adu2021/ModelCompose:multimodal-vicuna-7b-v1.5-{s}"
                                          for s in ("vision-damc", "audio-naivemc", "point-damc"))
    with pytest.raises(PresetError, match="vision-damc, vision-naivemc"):
        resolve_preset("modelcompose", {"STUDIO_MODELCOMPOSE_EXPERTS": "image-damc"}, cuda_available=lambda: True,
                       hub_reachable=lambda: True)
    zero = resolve_preset("modelcompose", {"SPACES_ZERO_GPU": "1"}, cuda_available=lambda: False, hub_reachable=lambda: True)
    assert zero.zero_gpu
    assert preset_name(None, {"STUDIO_PRESET": "modelcompose"}) == "modelcompose" and preset_name(None, {}) is None
    with pytest.raises(PresetError, match="unknown preset"):
        preset_name("llava", {})


def test_preset_names_every_encoders_weight_source():
    """The encoder paths of the original's training scripts (run_finetune_<m>_damc.sh --mm_<m>_encoder) and where
    each file is published; BEATs is not on the hub, STUDIO_BEATS_WEIGHTS gives it."""
    from studio.presets import ENCODERS, encoder_sources

    assert {m: (w.kind, w.original.rsplit("/", 1)[-1]) for m, w in ENCODERS.items()} == {
        "image": ("clip", "clip-vit-large-patch14-336"), "audio": ("beats", "BEATs_iter3_plus_AS2M.pt"),
        "video": ("languagebind-video", "LanguageBind_Video_merge"), "point": ("point-bert", "point_bert_v1.2.pt")}
    assert ENCODERS["image"].source == "openai/clip-vit-large-patch14-336"
    assert ENCODERS["video"].source == "LanguageBind/LanguageBind_Video_merge"
    assert ENCODERS["point"].source == "RunsenXu/PointLLM_7B_v1.1_init:point_bert_v1.2.pt"
    assert ENCODERS["audio"].source is None and "microsoft/unilm" in ENCODERS["audio"].where
    assert encoder_sources({"STUDIO_BEATS_WEIGHTS": "/w/BEATs_iter3_plus_AS2M.pt"})["audio"].source == "/w/BEATs_iter3_plus_AS2M.pt"


def test_clip_pads_to_square_with_the_mean_colour():
    """mm_utils.expand2square with process_images' colour tuple(int(x * 255) for x in image_mean)."""
    from PIL import Image

    from modalities.encoders.clip import CLIP_MEAN, expand2square, pad_colour

    assert pad_colour(CLIP_MEAN) == (122, 116, 104)
    wide = Image.new("RGB", (10, 4), (255, 0, 0))
    sq = np.asarray(expand2square(wide, pad_colour(CLIP_MEAN)))
    assert sq.shape == (10, 10, 3)
    assert (sq[3:7] == (255, 0, 0)).all() and (sq[:3] == (122, 116, 104)).all() and (sq[7:] == (122, 116, 104)).all()
    tall = np.asarray(expand2square(Image.new("RGB", (3, 10), (0, 255, 0)), (1, 2, 3)))
    assert (tall[:, 3:6] == (0, 255, 0)).all() and (tall[:, :3] == (1, 2, 3)).all() and (tall[:, 6:] == (1, 2, 3)).all()
    square = Image.new("RGB", (5, 5))
    assert expand2square(square, (0, 0, 0)) is square


def test_vicuna_v1_prompt_is_the_originals():
    """THUNLP-MT/ModelCompose demo_app.py: one 'label: <placeholder>' line per modality, in the order
    image, audio, video, point, before the question, in conv_vicuna_v1; generation stops at </s>."""
    from composition.templates import get_template

    t = get_template("vicuna_v1")
    prompt = t.format_prompt(user_message("Q?", ["point", "image", "audio", "video"]))
    assert prompt.endswith("USER: image: <image>\naudio: <audio>\nvideo: <video>\npoint: <point>\nQ? ASSISTANT:")
    assert t.stop_strings == ("</s>",)
    # A question line that merely looks like a label stays as typed.
    assert "point cloud: x" in t.format_prompt(user_message("point cloud: x", []))


def test_segments_get_bos_only_on_the_first():
    """mm_utils.py tokenizer_modal_token: each chunk tokenized on its own, BOS kept on the first only.
    A Llama-like tokenizer that adds <s> with special tokens on."""
    from tokenizers import processors

    from composition.random_models import byte_tokenizer
    from composition.prompt import tokenize_segments

    tok = byte_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    assert tok("x")["input_ids"][0] == tok.bos_token_id
    ids = tokenize_segments(tok, ["A USER: image: ", "\nQ? ASSISTANT:"])
    bos = tok.bos_token_id
    assert ids[0][0] == bos and bos not in ids[1] and ids[0].count(bos) == 1


def test_the_preset_imports_once_and_serves_the_imported_experts(tmp_path):
    """`--preset modelcompose` without the hub: the same code path over a local base and checkpoint (CPU, fp32)."""
    from composition.random_models import ModelShape, synthetic_base
    from studio.presets import PresetPlan, load_preset_studio

    base = synthetic_base(ModelShape("tiny", 64, 2, 4, 128))
    base.model.save_pretrained(tmp_path / "base")
    base.tokenizer.save_pretrained(tmp_path / "base")
    ckpt = mc.single(tmp_path / "vision-damc", "vision", "modal+language")
    plan = PresetPlan("modelcompose", str(tmp_path / "base"), (str(ckpt),), device="cpu", dtype="float32")
    said: list[str] = []
    studio = load_preset_studio(plan, tmp_path, log=said.append)
    assert list(studio.cm.experts) == ["mc-image"] and said and "importing 1" in said[0]
    assert studio.cm.experts["mc-image"].training == "decoupled"
    said.clear()
    again = load_preset_studio(plan, tmp_path, log=said.append)  # the next start reuses the imported folder
    assert list(again.cm.experts) == ["mc-image"] and not said


# --- the audio expert: BEATs features through the Q-Former ------------------------------------------
def reference_qformer(t: dict[str, torch.Tensor], x: torch.Tensor, heads: int = 12, eps: float = 1e-12) -> torch.Tensor:
    """The original's forward written out from builder.py / video_llama Qformer.py (BERT layers on the queries)."""
    import torch.nn.functional as F

    q = "model.modal_projectors.audio."
    b = q + "audio_Qformer.bert."

    def lin(prefix, v):
        return v @ t[prefix + ".weight"].T + t[prefix + ".bias"]

    def ln(prefix, v):
        return F.layer_norm(v, v.shape[-1:], t[prefix + ".weight"], t[prefix + ".bias"], eps)

    def attend(prefix, h, kv):
        n, d = h.shape[0], h.shape[1] // heads
        split = lambda v: v.view(v.shape[0], heads, d).transpose(0, 1)  # noqa: E731
        qh, kh, vh = split(lin(prefix + ".self.query", h)), split(lin(prefix + ".self.key", kv)), split(lin(prefix + ".self.value", kv))
        ctx = torch.softmax(qh @ kh.transpose(1, 2) / d ** 0.5, dim=-1) @ vh
        return ln(prefix + ".output.LayerNorm", lin(prefix + ".output.dense", ctx.transpose(0, 1).reshape(n, -1)) + h)

    x = x + t[q + "audio_position_embedding.weight"][: x.shape[0]]
    h = ln(b + "embeddings.LayerNorm", t[q + "audio_query_tokens"][0])
    i = 0
    while f"{b}encoder.layer.{i}.attention.self.query.weight" in t:
        layer = f"{b}encoder.layer.{i}"
        h = attend(layer + ".attention", h, h)
        h = attend(layer + ".crossattention", h, x)
        ff = lin(layer + ".output_query.dense", F.gelu(lin(layer + ".intermediate_query.dense", h)))
        h = ln(layer + ".output_query.LayerNorm", ff + h)
        i += 1
    return lin(q + "audio_llama_proj", h)


def test_the_audio_q_former_imports_and_computes_what_the_original_does(tmp_path):
    ckpt = mc.audio_expert(tmp_path / "audio-damc")
    (folder,) = import_modelcompose([str(ckpt)], tmp_path / "out")
    expert = load_expert(folder)
    spec = expert.config.projector
    assert (spec.type, spec.queries, spec.layers, spec.width, spec.in_dim) == ("qformer", 4, 2, 48, mc.FEATURES["audio"])
    assert expert.config.encoder.kind == "beats"
    tensors = torch.load(ckpt / "adapter_model.bin", weights_only=True)
    features = torch.randn(10, mc.FEATURES["audio"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = expert.projector(features)
    assert ours.shape == (4, 64)
    assert torch.allclose(ours, reference_qformer(tensors, features), atol=1e-4)
    block = expert.modality_block(features)  # [prefix; 4 query tokens; suffix]
    assert block.shape == (2 + 4 + 1, 64)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update({"model.modal_projectors.audio.audio_Qformer.bert.pooler.dense.weight": torch.zeros(2, 2)}),
     "audio Q-Former key"),
    (lambda t: t.__setitem__("model.modal_projectors.audio.audio_query_tokens", torch.zeros(1, 4, 40)), "has shape"),
    (lambda t: t.pop("model.modal_projectors.audio.audio_Qformer.bert.encoder.layer.1.output_query.dense.weight"), "lacks"),
])
def test_a_broken_audio_q_former_is_refused_by_name(tmp_path, change, message):
    from composition.importers import ImportError_

    ckpt = mc.audio_expert(tmp_path / "audio")
    tensors = torch.load(ckpt / "adapter_model.bin", weights_only=True)
    change(tensors)
    torch.save(tensors, ckpt / "adapter_model.bin")
    with pytest.raises(ImportError_, match=message):
        import_modelcompose([str(ckpt)], tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_imported_experts_of_every_modality_compose_side_by_side(tmp_path, base):
    """Image (CLIP), audio (Q-Former), video and point experts, both strategies: NaiveMC, DAMC and every expert in one batch."""
    sources = []
    for m in ("vision", "video", "point"):
        for strategy in ("modal+language", "same"):
            sources.append(mc.single(tmp_path / f"{m}-{strategy}", m, strategy, seed=len(sources)))
    sources += [mc.audio_expert(tmp_path / "audio-damc"), mc.audio_expert(tmp_path / "audio-naive", "same", seed=9)]
    folders = import_modelcompose([str(s) for s in sources], tmp_path / "out")
    cm = ComposedModel(base, feature_fn=features_as_data)
    for folder in folders:
        cm.load_expert(folder)
    inputs = [ModalInput(ours, features(m, seed=i)) for i, (m, ours) in
              enumerate((("vision", "image"), ("audio", "audio"), ("video", "video"), ("point", "point")))]
    answers = cm.compare("What do these have in common?", inputs, config=GenerationConfig(max_new_tokens=2))
    names = [a.name for a in answers]
    assert names[:2] == ["NaiveMC", "DAMC"] and len(names) == 2 + 8
    damc = answers[1]
    assert damc.experts == ["mc-image", "mc-audio", "mc-video", "mc-point"] and set(damc.coefficients["lambdas"].values()) == {0.25}
    logits = cm.logits("hi", inputs, ["DAMC", "NaiveMC", "expert:mc-audio"])
    assert all(torch.isfinite(x).all() for x in logits)


# --- merged checkpoints exactly as the original merge script writes them ---------------------------
def _expected_merged_keys(modalities, layers=2):
    """merge_unimodal_modelcompose.py, online-merge: keys held by several inputs (each expert's text delta and
    its prefix/suffix_tokens.default) get one copy per expert named default-<m>; the rest keep their names."""
    keys = set()
    for i in range(layers):
        for block, proj in mc.TARGETS:
            for m in modalities:
                for factor in "AB":
                    keys.add(f"model.layers.{i}.{block}.{proj}.lora_{factor}.default-{m}.weight")
                    keys.add(f"model.layers.{i}.{block}.{proj}.lora_{factor}.{m}.weight")
    for m in modalities:
        for which in ("prefix", "suffix"):
            keys |= {f"{which}_tokens.default-{m}", f"{which}_tokens.{m}"}
    return keys


@pytest.mark.parametrize("modalities", [["vision", "point"], ["video", "audio", "vision", "point"]])
def test_the_merge_writer_produces_what_the_original_script_writes(tmp_path, modalities):
    lambdas = {m: round(1 / len(modalities), 3) for m in modalities}
    src = mc.merged(tmp_path / "merged", modalities, lambdas, {m: 1.0 for m in modalities}, seed=2)
    tensors, cfg = load(src)
    inputs = [load(p)[0] for p in sorted((tmp_path / "merged-inputs").iterdir())]
    projector_keys = {k for t in inputs for k in t if ".modal_projectors." in k}
    assert set(tensors) == _expected_merged_keys(modalities) | projector_keys
    assert not any(".default." in k or k.endswith(".default") for k in tensors)  # no 'default' survives
    singles = {m: load(tmp_path / "merged-inputs" / f"multimodal-vicuna-7b-v1.5-{m}-damc")[0] for m in modalities}
    for m in modalities:  # every tensor is the input's own, under its new name
        assert torch.equal(tensors[f"prefix_tokens.default-{m}"], singles[m]["prefix_tokens.default"])
        assert torch.equal(tensors[f"model.layers.1.mlp.up_proj.lora_B.default-{m}.weight"],
                           singles[m]["model.layers.1.mlp.up_proj.lora_B.default.weight"])
    assert cfg["reset_scaling_weights"] == ",".join([f"default-{m}={lambdas[m]}" for m in modalities] + [f"{m}=1.0" for m in modalities])
    assert all(cfg[f"mm_{m}_encoder"] for m in modalities) and all(cfg[f"{m}_lora_alpha"] == 8 for m in modalities)
    assert (src / "merge_info.txt").read_text().startswith("Inputs:\n")


@pytest.mark.parametrize("modalities", [["vision", "point"], ["video", "audio", "vision", "point"]])
def test_a_merged_checkpoint_as_the_script_writes_it_imports(tmp_path, modalities):
    lambdas = {m: 0.1 * (i + 1) for i, m in enumerate(modalities)}
    mus = {m: 1.0 - 0.1 * i for i, m in enumerate(modalities)}
    src = mc.merged(tmp_path / "merged", modalities, lambdas, mus, seed=4)
    assert (src / "merge_info.txt").is_file() and (src.parent / "merged-inputs" / f"multimodal-vicuna-7b-v1.5-{modalities[0]}-damc"
                                                    / "trainer_state.json").is_file()
    folders = import_modelcompose([str(src)], tmp_path / "out")
    names = {f"mc-{OURS[m]}" for m in modalities}
    assert {f.name for f in folders} == names
    side = json.loads((tmp_path / "out" / "composition.json").read_text())
    assert side["merge_all_experts"] is True  # the original's rule: every merged expert's text delta, always
    assert side["lambdas"] == {f"mc-{OURS[m]}": pytest.approx(lambdas[m]) for m in modalities}
    assert side["mus"] == {OURS[m]: pytest.approx(mus[m]) for m in modalities}
    for folder in folders:
        info = json.loads((folder / "expert.json").read_text())
        assert "whatever inputs a question has" in info["description"] and "merged checkpoint" in info["source"]
        assert not any("default" in f.name for f in folder.iterdir())  # the default-<m> tokens are not written


def test_merged_default_tokens_are_checked(tmp_path):
    src = mc.merged(tmp_path / "merged", ["vision", "point"], {"vision": 0.5, "point": 0.5}, {"vision": 1.0, "point": 1.0})
    tensors, cfg = load(src)
    tensors["suffix_tokens.default-point"] = torch.zeros(1, 1, 63)  # not the LLM's width
    mc.write(src, cfg, tensors)
    with pytest.raises(ImportError_, match="suffix_tokens.default-point has shape"):
        import_modelcompose([str(src)], tmp_path / "out")
    tensors.pop("suffix_tokens.default-point")
    tensors["prefix_tokens.default-audio"] = torch.zeros(1, 2, 64)  # a modality the checkpoint does not have
    mc.write(src, cfg, tensors)
    with pytest.raises(ImportError_, match="unrecognised"):
        import_modelcompose([str(src)], tmp_path / "out")


def test_a_single_checkpoint_with_a_renamed_default_token_is_refused(tmp_path):
    src = mc.single(tmp_path / "v", "vision", "modal+language")
    tensors, cfg = load(src)
    tensors["prefix_tokens.default-vision"] = tensors.pop("prefix_tokens.default")  # not a merged file: no λ for it
    mc.write(src, cfg, tensors)
    with pytest.raises(ImportError_):
        import_modelcompose([str(src)], tmp_path / "out")


def _plan_logits(cm, inputs, plan):
    from composition.generate import prefill_logits

    cm.prepare_dense(plan.variants)
    rows = cm.prompt_rows(QUESTION, inputs, plan.variants)
    batch = cm.routed_batch(rows)
    with torch.no_grad():
        out = prefill_logits(cm.model, cm.router, batch, cm.coef_table(plan.variants))
    return [out[i, out.shape[1] - n:].float() for i, n in enumerate(batch.lengths)]


@pytest.mark.parametrize("modalities", [["vision", "point"], ["video", "audio", "vision", "point"]])
def test_merged_damc_with_missing_inputs_composes_as_the_original(tmp_path, base, modalities):
    """The original's merged layer adds every default-<m> delta with its λ on text tokens whatever inputs are
    given (LocalLoraLinear, 'default' route): with one point cloud only, merge_all_experts reproduces it."""
    lambdas = {m: 0.15 * (i + 1) for i, m in enumerate(modalities)}
    mus = {m: 0.9 for m in modalities}
    src = mc.merged(tmp_path / "merged", modalities, lambdas, mus, seed=6)
    folders = import_modelcompose([str(src)], tmp_path / "out")
    side = json.loads((tmp_path / "out" / "composition.json").read_text())
    cm = ComposedModel(base, [load_expert(f) for f in folders], feature_fn=features_as_data)
    feats = features("point")
    inputs = [ModalInput("point", feats)]
    coef = Coefficients(side["lambdas"], side["mus"])
    plan = cm.plan({"point"}, ["DAMC"], coef, merge_all_experts=side["merge_all_experts"])
    assert sorted(plan.variants[0].experts) == sorted(f"mc-{OURS[m]}" for m in modalities)
    got = _plan_logits(cm, inputs, plan)[0]
    tensors, cfg = load(src)
    text = [(f"default-{m}", lambdas[m]) for m in modalities]
    want = reference_logits(base, tensors, cfg, {TEXT_ROUTE: text, "point": [("point", mus["point"])]}, "point", feats)
    assert (got - want).abs().max() < 1e-4
    # The studio's own rule (experts with an input) merges the point expert alone: a different model.
    alone = _plan_logits(cm, inputs, cm.plan({"point"}, ["DAMC"], coef))[0]
    assert (alone - want).abs().max() > 1e-3


def test_encoder_sources_of_the_original_become_the_released_ones(tmp_path):
    from composition.importers.modelcompose import encoder_source

    assert encoder_source("model/clip-vit-large-patch14-336", "image") == "openai/clip-vit-large-patch14-336"
    assert encoder_source("/cluster/x/LanguageBind_Video_merge/", "video") == "LanguageBind/LanguageBind_Video_merge"
    assert encoder_source("model/PointLLM/point_bert_v1.2.pt", "point") == "RunsenXu/PointLLM_7B_v1.1_init:point_bert_v1.2.pt"
    assert encoder_source("model/beats/BEATs_iter3_plus_AS2M.pt", "audio") is None  # not on the hub: the encoder says where
    local = tmp_path / "BEATs_iter3_plus_AS2M.pt"
    local.write_bytes(b"x")
    assert encoder_source(str(local), "audio") == str(local)  # a path that exists here is kept
    assert encoder_source("vision-encoder", "image") == "vision-encoder"  # unknown: kept as written
    assert encoder_source("anything", "image", {"image": "mine"}) == "mine" and encoder_source("", "image") is None
