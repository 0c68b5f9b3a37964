"""The paper's audio, video and point encoders (beats, languagebind-video, point-bert) at reduced sizes.

Random weights are built here in each original's key layout and saved in the released file
formats (BEATs {"cfg", "model"} .pt, LanguageBind's hub folder, Point-BERT .pt), then loaded
through the registry. Full-size key/shape sets are built on the meta device (no memory).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from modalities.encoders import EncoderError, encoder_spec, get_encoder, list_encoder_specs
from modalities.encoders import beats as B
from modalities.encoders import languagebind_video as LB
from modalities.encoders import point_bert as PB
from modalities.encoders.kaldi_fbank import kaldi_fbank, mel_banks, num_frames

from tests.media_factory import asset, media_assets  # noqa: E402

TRIPWIRE = {"fired": False}


def _tripwire():  # what a hostile pickle would run; weights_only=True must never call it
    TRIPWIRE["fired"] = True
    return {}


class _Hostile:
    def __reduce__(self):
        return (_tripwire, ())


# --- Kaldi fbank -------------------------------------------------------------------------

def reference_fbank(wave: np.ndarray, rate: int = 16000, bins: int = 128) -> np.ndarray:
    """Kaldi's fbank written loop by loop from its definition (feature-window.cc, mel-computations.cc)."""
    size, shift, fft = 400, 160, 512
    count = 1 + (len(wave) - size) // shift
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(20.0), mel(rate / 2)
    delta = (hi - lo) / (bins + 1)
    banks = np.zeros((bins, fft // 2 + 1))
    for m in range(bins):
        left, centre, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
        for k in range(fft // 2):  # Kaldi's num_fft_bins = fft/2: the Nyquist bin stays 0
            f = mel(k * rate / fft)
            if left < f < right:
                banks[m, k] = (f - left) / (centre - left) if f <= centre else (right - f) / (right - centre)
    window = np.array([(0.5 - 0.5 * math.cos(2 * math.pi * n / (size - 1))) ** 0.85 for n in range(size)])
    out = np.zeros((count, bins))
    for t in range(count):
        frame = wave[t * shift: t * shift + size].astype(np.float64).copy()
        frame -= frame.mean()
        for i in range(size - 1, 0, -1):
            frame[i] -= 0.97 * frame[i - 1]
        frame[0] -= 0.97 * frame[0]
        padded = np.zeros(fft)
        padded[:size] = frame * window
        power = np.abs(np.fft.rfft(padded)) ** 2
        out[t] = np.log(np.maximum(banks @ power, np.finfo(np.float32).eps))
    return out


def test_fbank_matches_the_kaldi_definition():
    rng = np.random.default_rng(0)
    t = np.arange(16000 // 4) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)) * 2 ** 15
    wave[:800] = 0.0  # silence: energies under the floor take the log floor
    ours = kaldi_fbank(torch.from_numpy(wave)).numpy()
    ref = reference_fbank(wave)
    assert ours.shape == ref.shape == (1 + (len(wave) - 400) // 160, 128)
    assert np.abs(ours - ref).max() < 2e-3
    assert ours[0].min() == pytest.approx(math.log(np.finfo(np.float32).eps), abs=1e-5)  # the floor


def test_fbank_frame_counts_and_the_1024_frame_input():
    assert num_frames(163_840, 400, 160) == 1022  # 10.24 s: Kaldi's snip_edges framing
    assert num_frames(164_080, 400, 160) == 1024  # 10.255 s is the shortest clip with 1024 own frames
    assert num_frames(399, 400, 160) == 0
    wave = torch.rand(163_840) * 2 - 1
    x = B.beats_input(wave)
    assert x.shape == (1024, 128)
    assert torch.count_nonzero(x[1022:]) == 0 and torch.count_nonzero(x[1021]) > 0  # 2 padding frames
    assert B.beats_input(torch.rand(164_080) * 2 - 1).abs().sum(1).min() > 0  # no padding at all
    assert B.beats_input(torch.rand(30 * 16000)).shape == (1024, 128)  # 30 s is cut to 10.24 s
    assert torch.count_nonzero(B.beats_input(torch.rand(160) * 0.1)) == 0  # < one window: all padding
    with pytest.raises(EncoderError, match="shorter than one fbank window"):
        kaldi_fbank(torch.zeros(399))


def test_mel_banks_shape_and_a_tone_lands_in_its_band():
    banks = mel_banks(128, 512, 16000)
    assert banks.shape == (128, 257) and torch.all(banks[:, -1] == 0) and banks.max() <= 1
    filled = banks.amax(dim=1) > 0  # at 128 bins some low filters fall between FFT bins: all zero, as in Kaldi
    assert 120 <= int(filled.sum()) < 128
    peaks = banks[filled].argmax(dim=1)
    assert torch.all(peaks[1:] >= peaks[:-1])
    t = torch.arange(16000, dtype=torch.float64) / 16000
    fb = kaldi_fbank(torch.sin(2 * math.pi * 1000 * t) * 2 ** 14)
    best = int(fb.mean(0).argmax())
    mel = lambda f: 1127.0 * math.log1p(f / 700)  # noqa: E731
    centre_hz = 700 * (math.exp((mel(20) + (best + 1) * (mel(8000) - mel(20)) / 129) / 1127) - 1)
    assert abs(centre_hz - 1000) < 60


def test_fbank_is_deterministic_and_the_normalisation_constants():
    wave = torch.rand(16000) * 2 - 1
    assert torch.equal(B.beats_input(wave), B.beats_input(wave.clone()))
    raw = kaldi_fbank(wave.double() * 2 ** 15)
    assert torch.allclose(B.beats_input(wave)[: raw.shape[0]], (raw - 15.41663) / (2 * 6.55582), atol=1e-6)


# --- BEATs ---------------------------------------------------------------------------------

TINY_BEATS = dict(input_patch_size=16, embed_dim=24, encoder_layers=2, encoder_embed_dim=32,
                  encoder_ffn_embed_dim=48, encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4,
                  num_buckets=32, max_distance=64, deep_norm=True, relative_position_embedding=True,
                  gru_rel_pos=True, finetuned_model=False, layer_norm_first=False)


def tiny_beats_checkpoint(seed: int = 0, with_copies: bool = True, **cfg_changes) -> dict:
    cfg = {**TINY_BEATS, **cfg_changes, "dropout": 0.1, "encoder_layerdrop": 0.05}  # + training-only fields
    torch.manual_seed(seed)
    model = B.BeatsModel(B.BeatsConfig.from_cfg(cfg))
    for p in model.parameters():  # non-trivial values everywhere (LayerNorms, gates, biases)
        p.data.normal_(0, 0.3)
    state = model.state_dict()
    if with_copies:  # upstream's state_dict() repeats the shared relative-position table per layer
        for key in B.shared_bias_copies(B.BeatsConfig.from_cfg(cfg)):
            state[key] = state["encoder.layers.0.self_attn.relative_attention_bias.weight"].clone()
    return {"cfg": cfg, "model": state}


def save_pt(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def beats_file(tmp_path_factory):
    return save_pt(tiny_beats_checkpoint(), tmp_path_factory.mktemp("beats") / "BEATs_tiny.pt")


def test_beats_loads_strictly_and_encodes(beats_file):
    enc = get_encoder("beats", str(beats_file))
    a, b = torch.rand(16000 * 2) * 2 - 1, torch.rand(16000 * 4) * 2 - 1
    fa = enc.encode(a)
    assert fa.shape == (512, 32) and fa.dtype == torch.float32 and torch.isfinite(fa).all()
    assert torch.equal(fa, enc.encode(a.clone()))  # deterministic
    batched = enc.encode_batch([a, b])
    assert torch.allclose(batched[0], fa, atol=1e-5) and torch.allclose(batched[1], enc.encode(b), atol=1e-5)
    assert not torch.allclose(batched[0], batched[1], atol=1e-2)  # the input matters


def test_beats_attention_equals_the_originals_formula():
    """BEATs' alpha=32 trick (q/32, (qk - max)*32) with the gated bias == our SDPA with additive bias."""
    torch.manual_seed(1)
    cfg = B.BeatsConfig(**TINY_BEATS)
    attn = B.BeatsAttention(cfg, owns_bias=True)
    for p in attn.parameters():
        p.data.normal_(0, 0.5)
    x = torch.randn(2, 10, 32)
    pos = attn.relative_attention_bias(B.relative_position_buckets(10, 32, 64)).permute(2, 0, 1)
    heads, d, alpha = 4, 8, 32
    q = attn.q_proj(x).view(2, 10, heads, d).transpose(1, 2) * d ** -0.5 / alpha
    k = attn.k_proj(x).view(2, 10, heads, d).transpose(1, 2)
    v = attn.v_proj(x).view(2, 10, heads, d).transpose(1, 2)
    logits = q @ k.transpose(-1, -2)
    logits = (logits - logits.max(dim=-1, keepdim=True).values) * alpha
    raw_q = q * alpha / d ** -0.5
    g = torch.sigmoid(attn.grep_linear(raw_q).view(2, heads, 10, 2, 4).sum(-1))
    gate = g[..., :1] * (g[..., 1:] * attn.grep_a - 1.0) + 2.0
    ref = (logits + gate * pos[None]).softmax(-1) @ v
    ref = attn.out_proj(ref.transpose(1, 2).reshape(2, 10, 32))
    assert torch.allclose(attn(x, pos), ref, atol=1e-5)


def test_relative_position_buckets_follow_t5():
    buckets = B.relative_position_buckets(900, 320, 800)
    assert buckets[0, 0] == 0 and buckets[5, 0] == 5 and buckets[0, 5] == 165  # exact below 80, +160 for keys after
    assert buckets.max() == 319 and buckets[899, 0] == 159  # far offsets saturate
    assert torch.all(buckets[0, 1:161].diff() >= 0)


def test_beats_checkpoint_without_shared_copies_loads_to_the_same_features(tmp_path, beats_file):
    path = save_pt(tiny_beats_checkpoint(with_copies=False), tmp_path / "nocopies.pt")
    wave = torch.rand(8000) * 2 - 1
    assert torch.equal(get_encoder("beats", str(path)).encode(wave), get_encoder("beats", str(beats_file)).encode(wave))


@pytest.mark.parametrize("damage, message", [
    (lambda c: c["model"].pop("encoder.layers.1.fc2.bias"), "missing"),
    (lambda c: c["model"].__setitem__("encoder.extra.weight", torch.zeros(2)), "unexpected"),
    (lambda c: c["model"].__setitem__("encoder.layers.0.fc1.weight", torch.zeros(48, 31)), "shape"),
    (lambda c: c["model"]["post_extract_proj.weight"].__setitem__((0, 0), float("nan")), "NaN"),
    (lambda c: c["model"]["encoder.layers.1.self_attn.relative_attention_bias.weight"].add_(1), "shares"),
    (lambda c: c.__setitem__("extra", 1), "exactly 'cfg' and 'model'"),
    (lambda c: c["cfg"].__setitem__("activation_fn", "relu"), "gelu"),
    (lambda c: c.__setitem__("model", [1, 2]), "mapping"),
])
def test_beats_refuses_damaged_checkpoints(tmp_path, damage, message):
    ckpt = tiny_beats_checkpoint()
    damage(ckpt)
    path = save_pt(ckpt, tmp_path / "bad.pt")
    with pytest.raises(EncoderError, match=message):
        get_encoder("beats", str(path))


def test_beats_full_size_key_set_on_meta():
    shapes = B.released_checkpoint_shapes(B.BeatsConfig())
    assert shapes["patch_embedding.weight"] == (512, 1, 16, 16)
    assert shapes["encoder.pos_conv.0.weight_v"] == (768, 48, 128) and shapes["encoder.pos_conv.0.weight_g"] == (1, 1, 128)
    assert shapes["encoder.layers.11.self_attn.relative_attention_bias.weight"] == (320, 12)
    assert shapes["encoder.layers.0.self_attn.grep_linear.weight"] == (8, 64)
    assert shapes["encoder.layers.0.self_attn.grep_a"] == (1, 12, 1, 1)
    assert not any(k.startswith("predictor") for k in shapes)
    assert len([k for k in shapes if k.startswith("encoder.layers.")]) == 12 * 20
    params = sum(math.prod(s) for k, s in shapes.items() if "relative_attention_bias" not in k or ".0." in k)
    assert 89e6 < params < 92e6  # BEATs base: ~90M
    assert B.BeatsConfig().num_tokens == 512 and encoder_spec("beats").num_tokens == 512
    tuned = B.released_checkpoint_shapes(B.BeatsConfig(finetuned_model=True))
    assert tuned["predictor.weight"] == (527, 768)


# --- hostile files (all three loaders) --------------------------------------------------------

def _hostile_pt(path: Path) -> Path:
    torch.save({"cfg": {}, "model": _Hostile()}, path)
    return path


def test_code_running_pickles_are_refused_and_never_run(tmp_path):
    TRIPWIRE["fired"] = False
    bad = _hostile_pt(tmp_path / "hostile.pt")
    with pytest.raises(EncoderError, match="refused"):
        get_encoder("beats", str(bad))
    with pytest.raises(EncoderError, match="refused"):
        get_encoder("point-bert", str(bad))
    folder = tmp_path / "lb"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_languagebind_config()))
    _hostile_pt(folder / "pytorch_model.bin")
    with pytest.raises(EncoderError, match="refused"):
        get_encoder("languagebind-video", str(folder))
    assert TRIPWIRE["fired"] is False


def test_truncated_files_are_refused(tmp_path, beats_file, point_bert_file, languagebind_folder):
    for kind, src in (("beats", beats_file), ("point-bert", point_bert_file)):
        data = src.read_bytes()
        cut = tmp_path / f"{kind}-cut.pt"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(EncoderError, match="cannot be read"):
            get_encoder(kind, str(cut))
    folder = tmp_path / "lb-cut"
    folder.mkdir()
    (folder / "config.json").write_text((languagebind_folder / "config.json").read_text())
    data = (languagebind_folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(EncoderError, match="cannot be read"):
        get_encoder("languagebind-video", str(folder))


def test_missing_weights_say_where_to_get_them(tmp_path):
    for kind, hint in (("beats", "BEATs_iter3_plus_AS2M.pt"), ("point-bert", "point_bert_v1.2.pt"),
                       ("languagebind-video", "LanguageBind_Video_merge")):
        with pytest.raises(EncoderError, match=hint):
            get_encoder(kind)
    with pytest.raises(EncoderError, match="not found"):
        get_encoder("beats", str(tmp_path / "nope.pt"))
    with pytest.raises(EncoderError, match="no config.json"):
        get_encoder("languagebind-video", str(tmp_path))


# --- Point-BERT ------------------------------------------------------------------------------

TINY_PB = PB.PointBertConfig(trans_dim=32, depth=2, num_heads=4, group_size=8, num_group=16, encoder_dims=24, npoints=256)


def tiny_point_bert_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = PB.PointBertModel(TINY_PB)
    for name, p in model.named_parameters():
        p.data.normal_(0, 0.3)
    for m in model.modules():  # BatchNorm running statistics as a trained file has them
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(1000)
    return model.state_dict()


@pytest.fixture(scope="module")
def point_bert_file(tmp_path_factory):
    return save_pt(tiny_point_bert_state(), tmp_path_factory.mktemp("pb") / "point_bert_tiny.pt")


TINY_PB_YAML = """model : {
  NAME: PointTransformer,
  trans_dim: 32,
  depth: 2,
  drop_path_rate: 0.1,
  cls_dim: 40,
  num_heads: 4,
  group_size: 8,
  num_group: 16,
  encoder_dims: 24,
  point_dims: 3,
  projection_hidden_layer: 2,
  projection_hidden_dim: [1024, 2048],
  use_max_pool: false
}
npoints: 256
"""


def point_bert_folder(pt_file: Path) -> Path:
    """The .pt beside its PointTransformer yaml (ModelCompose's format): how a reduced size is named."""
    folder = pt_file.parent / f"{pt_file.stem}-folder"
    folder.mkdir(exist_ok=True)
    (folder / pt_file.name).write_bytes(pt_file.read_bytes())
    (folder / "PointTransformer_tiny.yaml").write_text(TINY_PB_YAML)
    return folder


def tiny_point_bert_encoder(path: Path) -> PB.PointBertEncoder:
    return get_encoder("point-bert", str(point_bert_folder(path)))


def random_cloud(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randn(n, 3, generator=g)
    xyz = xyz / xyz.norm(dim=1).max()
    return torch.cat([xyz, torch.rand(n, 3, generator=g)], dim=1)


def test_point_bert_loads_strictly_and_encodes(point_bert_file):
    enc = tiny_point_bert_encoder(point_bert_file)
    a, b = random_cloud(256, 0), random_cloud(300, 1)
    fa = enc.encode(a)
    assert fa.shape == (17, 32) and torch.isfinite(fa).all()
    assert torch.equal(fa, enc.encode(a.clone()))
    batched = enc.encode_batch([a, b])
    assert torch.allclose(batched[0], fa, atol=1e-5) and torch.allclose(batched[1], enc.encode(b), atol=1e-5)
    assert not torch.allclose(batched[0], batched[1], atol=1e-2)


def test_point_bert_wrapped_pointllm_layout_loads_the_same(tmp_path, point_bert_file):
    state = tiny_point_bert_state()
    wrapped = {"state_dict": {**{PB.WRAPPED_PREFIX + k: v for k, v in state.items()},
                              "module.cls_head_finetune.0.weight": torch.zeros(2, 2)}, "epoch": 300}
    path = save_pt(wrapped, tmp_path / "wrapped.pt")
    cloud = random_cloud(256, 2)
    assert torch.equal(tiny_point_bert_encoder(path).encode(cloud), tiny_point_bert_encoder(point_bert_file).encode(cloud))


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.pop("blocks.blocks.1.attn.proj.bias"), "missing"),
    (lambda s: s.__setitem__("blocks.blocks.0.attn.qkv.bias", torch.zeros(96)), "unexpected"),
    (lambda s: s.__setitem__("reduce_dim.weight", torch.zeros(32, 25)), "shape"),
    (lambda s: s["cls_pos"].fill_(float("inf")), "NaN or infinite"),
])
def test_point_bert_refuses_damaged_state(tmp_path, damage, message):
    state = tiny_point_bert_state()
    damage(state)
    with pytest.raises(EncoderError, match=message):
        tiny_point_bert_encoder(save_pt(state, tmp_path / "bad.pt"))


def test_point_bert_yaml_config_is_read_like_modelcompose(tmp_path, point_bert_file):
    assert PB.config_from_yaml(point_bert_folder(point_bert_file) / "PointTransformer_tiny.yaml") == TINY_PB
    released = tmp_path / "PointTransformer_8192point_2layer.yaml"
    released.write_text(TINY_PB_YAML.replace("trans_dim: 32", "trans_dim: 384").replace("depth: 2", "depth: 12")
                        .replace("num_heads: 4", "num_heads: 6").replace("group_size: 8", "group_size: 32")
                        .replace("num_group: 16", "num_group: 512").replace("encoder_dims: 24", "encoder_dims: 256")
                        .replace("npoints: 256", "npoints: 8192"))
    assert PB.config_from_yaml(released) == PB.PointBertConfig()  # the yaml's numbers are our defaults
    pooled = tmp_path / "pooled.yaml"
    pooled.write_text(TINY_PB_YAML.replace("use_max_pool: false", "use_max_pool: true"))
    with pytest.raises(EncoderError, match="use_max_pool"):
        PB.config_from_yaml(pooled)
    with pytest.raises(EncoderError, match="does not match"):  # the tiny file read with the released config
        get_encoder("point-bert", str(point_bert_file))


def test_point_bert_groups_at_full_size():
    cloud = random_cloud(8192, 3)[None]
    groups, centres = PB.group_points(cloud, 512, 32)
    assert groups.shape == (1, 512, 32, 6) and centres.shape == (1, 512, 3)
    assert torch.equal(centres[0, 0], cloud[0, 0, :3])  # FPS starts at point 0 (deterministic)
    assert torch.all(groups[0, :, 0, :3].abs().amax(-1) == 0)  # each centre is its own nearest neighbour
    assert len({tuple(c.tolist()) for c in centres[0]}) == 512  # 512 distinct centres
    assert torch.allclose(groups[0, :, :, 3:].mean(), cloud[0, :, 3:].mean(), atol=0.05)  # rgb carried as is


def test_point_bert_input_transform_reaches_8192_points():
    cloud = random_cloud(2048, 4)
    up = PB.point_bert_input(cloud, 8192)
    assert up.shape == (8192, 6) and torch.equal(up[2048:4096], up[:2048])  # repeated in order
    assert torch.allclose(up[:2048], PB.pc_norm(cloud), atol=1e-6)  # tiling keeps the centroid: same pc_norm
    down = PB.point_bert_input(random_cloud(10000, 5), 8192)
    assert down.shape == (8192, 6) and len({tuple(p.tolist()) for p in down[:, :3]}) == 8192
    assert encoder_spec("point-bert").input_limits == {"num_points": 8192, "keep_exact": True}


def test_point_bert_full_size_key_set_on_meta():
    shapes = PB.released_checkpoint_shapes()
    assert shapes["encoder.first_conv.0.weight"] == (128, 6, 1)
    assert shapes["encoder.second_conv.3.weight"] == (256, 512, 1)
    assert shapes["encoder.first_conv.1.num_batches_tracked"] == ()
    assert shapes["reduce_dim.weight"] == (384, 256) and shapes["cls_token"] == (1, 1, 384)
    assert shapes["blocks.blocks.11.attn.qkv.weight"] == (1152, 384) and "blocks.blocks.0.attn.qkv.bias" not in shapes
    assert shapes["pos_embed.2.weight"] == (384, 128) and shapes["norm.weight"] == (384,)
    assert not any(k.startswith("blocks.blocks.12.") for k in shapes)
    assert PB.PointBertConfig().num_tokens == 513


# --- LanguageBind video ---------------------------------------------------------------------

def tiny_languagebind_config() -> dict:
    vision = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4,
              "image_size": 28, "patch_size": 14, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
              "projection_dim": 16, "num_frames": 8, "add_time_attn": True, "lora_r": 2,
              "video_decode_backend": "decord"}
    text = {"hidden_size": 24, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4,
            "vocab_size": 50, "max_position_embeddings": 12, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
            "projection_dim": 16, "add_time_attn": False, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    return {"architectures": ["LanguageBindVideo"], "projection_dim": 16, "vision_config": vision, "text_config": text}


def tiny_languagebind_state(config: dict, seed: int = 0, zero_temporal: bool = False) -> dict[str, torch.Tensor]:
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    vcfg, frames = LB._vision_config(config["vision_config"])
    tower = LB.LanguageBindVisionTower(vcfg, frames)
    text = CLIPTextModel(LB._text_config(config["text_config"]))
    state = {"vision_model." + k: v.clone() for k, v in tower.state_dict().items()}
    for k, v in state.items():
        if v.is_floating_point():
            v.normal_(0, 0.2)
            if zero_temporal and (".temporal_embedding" in k or ".temporal_attn.out_proj." in k):
                v.zero_()
    state.update({(k if k.startswith('text_model.') else 'text_model.' + k): v.clone()
                  for k, v in text.state_dict().items()})
    state["vision_model.embeddings.position_ids"] = torch.arange(5)[None]  # older transformers saved it
    state["visual_projection.weight"] = torch.randn(16, 32)
    state["text_projection.weight"] = torch.randn(16, 24)
    state["logit_scale"] = torch.tensor(2.6592)
    return state


def write_languagebind_folder(folder: Path, state: dict, fmt: str = "safetensors") -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(tiny_languagebind_config()))
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def languagebind_folder(tmp_path_factory):
    return write_languagebind_folder(tmp_path_factory.mktemp("lb") / "LanguageBind_tiny",
                                     tiny_languagebind_state(tiny_languagebind_config()))


def random_frames(count: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, h, w), generator=g).float() / 255


def test_languagebind_loads_strictly_and_encodes(languagebind_folder, tmp_path):
    enc = get_encoder("languagebind-video", str(languagebind_folder))
    a, b = random_frames(8, 40, 40, 0), random_frames(8, 36, 60, 1)
    fa = enc.encode(a)
    assert fa.shape == (8 * 5, 32) and torch.isfinite(fa).all()
    assert torch.equal(fa, enc.encode(a.clone()))
    batched = enc.encode_batch([a, b])
    assert torch.allclose(batched[0], fa, atol=1e-5) and torch.allclose(batched[1], enc.encode(b), atol=1e-5)
    assert not torch.allclose(batched[0], batched[1], atol=1e-2)
    flipped = enc.encode(a.flip(-1))  # no random flip at evaluation: a flipped clip is a different input
    assert not torch.allclose(flipped, fa, atol=1e-3)
    bin_folder = write_languagebind_folder(tmp_path / "bin", tiny_languagebind_state(tiny_languagebind_config()), "bin")
    assert torch.equal(get_encoder("languagebind-video", str(bin_folder)).encode(a), fa)  # same weights, .bin layout


def test_languagebind_without_temporal_parts_equals_transformers_clip_layer_minus_2(tmp_path):
    """With temporal embedding and temporal out_proj zero, each frame must go through plain CLIP:
    checks the key mapping, the spatial layers and the hidden-state selection against transformers."""
    from transformers import CLIPVisionModel

    config = tiny_languagebind_config()
    state = tiny_languagebind_state(config, seed=3, zero_temporal=True)
    folder = write_languagebind_folder(tmp_path / "zero-temporal", state)
    enc = get_encoder("languagebind-video", str(folder))
    frames = random_frames(8, 28, 28, 2)
    ours = enc.encode(frames).view(8, 5, 32)
    vcfg, _ = LB._vision_config(config["vision_config"])
    clip = CLIPVisionModel(vcfg).eval()
    plain = {k.removeprefix("vision_model."): v for k, v in state.items() if k.startswith("vision_model.")
             and "temporal" not in k and not k.endswith("position_ids")}
    missing, unexpected = clip.load_state_dict(plain, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    pixels = LB.video_input(frames, 8, 28)
    with torch.no_grad():
        ref = clip(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    assert torch.allclose(ours, ref, atol=1e-4)


def test_languagebind_temporal_attention_mixes_frames(languagebind_folder):
    enc = get_encoder("languagebind-video", str(languagebind_folder))
    frames = random_frames(8, 28, 28, 4)
    changed = frames.clone()
    changed[7] = random_frames(1, 28, 28, 5)[0]
    a, b = enc.encode(frames).view(8, 5, 32), enc.encode(changed).view(8, 5, 32)
    assert not torch.allclose(a[0], b[0], atol=1e-4)  # frame 0's tokens see frame 7 through time attention


def test_languagebind_refuses_damaged_state(tmp_path):
    config = tiny_languagebind_config()
    for damage, message in (
        (lambda s: s.pop("vision_model.encoder.layers.2.temporal_attn.q_proj.bias"), "missing"),
        (lambda s: s.__setitem__("vision_model.encoder.layers.0.lora_A", torch.zeros(2)), "unexpected"),
        (lambda s: s.__setitem__("text_model.final_layer_norm.weight", torch.ones(25)), "shape"),
        (lambda s: s.__setitem__("vision_model.embeddings.position_ids", torch.arange(5).flip(0)[None]), "arange"),
    ):
        state = tiny_languagebind_state(config)
        damage(state)
        folder = write_languagebind_folder(tmp_path / f"bad-{message}", state)
        with pytest.raises(EncoderError, match=message):
            get_encoder("languagebind-video", str(folder))


def test_video_frame_indices_and_preprocessing():
    assert LB.frame_indices(100) == [0, 14, 28, 42, 56, 70, 84, 99]
    assert LB.frame_indices(8) == list(range(8))
    assert LB.frame_indices(3) == [0, 0, 0, 0, 1, 1, 1, 2]  # truncation, as numpy dtype=int
    assert LB.frame_indices(300) == [int(i) for i in np.linspace(0, 299, 8, dtype=int)]
    x = LB.video_input(random_frames(30, 300, 400, 0), 8)
    assert x.shape == (8, 3, 224, 224)
    # short side to 224 then centre crop: a 224 x 448 frame keeps its middle half unchanged
    wide = random_frames(8, 224, 448, 1)
    mean, std = torch.tensor(LB.CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(LB.CLIP_STD).view(1, 3, 1, 1)
    assert torch.allclose(LB.video_input(wide, 8), (wide[..., 112:336] - mean) / std, atol=1e-6)


def test_square_padding_of_the_decoder_is_removed_exactly():
    from modalities.image import IMAGENET_MEAN, pad_to_square

    frames = random_frames(8, 30, 50, 2)
    padded = torch.stack([pad_to_square(f, IMAGENET_MEAN) for f in frames])
    assert padded.shape[-2:] == (50, 50)
    assert torch.equal(LB.strip_square_padding(padded), frames)
    assert torch.equal(LB.strip_square_padding(frames), frames)  # nothing to strip
    assert torch.allclose(LB.video_input(padded, 8), LB.video_input(frames, 8))


def test_languagebind_full_size_key_set_on_meta():
    shapes = LB.released_checkpoint_shapes()
    assert shapes["vision_model.embeddings.position_embedding.weight"] == (257, 1024)
    assert shapes["vision_model.embeddings.patch_embedding.weight"] == (1024, 3, 14, 14)
    assert shapes["vision_model.encoder.layers.23.temporal_embedding"] == (1, 8, 1024)
    assert shapes["vision_model.encoder.layers.23.temporal_attn.out_proj.weight"] == (1024, 1024)
    assert shapes["vision_model.pre_layrnorm.weight"] == (1024,)
    assert shapes["text_model.embeddings.token_embedding.weight"] == (49408, 768)
    assert shapes["visual_projection.weight"] == (768, 1024) and shapes["logit_scale"] == ()
    vision = sum(math.prod(s) for k, s in shapes.items() if k.startswith("vision_model."))
    assert 400e6 < vision < 410e6  # ViT-L/14 (~303M) + 24 temporal attentions (~101M)
    assert encoder_spec("languagebind-video").num_tokens == 8 * 257


# --- real media through the decoders --------------------------------------------------------

needs_media = pytest.mark.skipif(media_assets() is None, reason="gradio media_assets not installed")


@needs_media
def test_real_audio_and_video_files_through_decoder_and_encoder(beats_file, languagebind_folder):
    from modalities import get_modality

    for name in ("audio_sample.wav", "cate_blanch.mp3"):
        loaded = get_modality("audio").load(asset("audio", name))
        feats = get_encoder("beats", str(beats_file)).encode(loaded.data)
        assert feats.shape == (512, 32) and torch.isfinite(feats).all()
    loaded = get_modality("video").load(asset("videos", "a.mp4"))
    feats = get_encoder("languagebind-video", str(languagebind_folder)).encode(loaded.data)
    assert feats.shape == (40, 32) and torch.isfinite(feats).all()


@needs_media
def test_real_mesh_through_the_point_decoder_at_8192_points(point_bert_file):
    from modalities import get_modality

    modality = get_modality("point").with_limits(**encoder_spec("point-bert").input_limits)
    loaded = modality.load(asset("models3d", "Duck.glb"))
    assert loaded.data.shape == (8192, 6)
    radius = float(loaded.data[:, :3].norm(dim=1).max())
    assert 0.95 < radius <= 1.0 + 1e-6  # the decoder normalised the whole mesh sample, not these 8192 points
    normed = PB.point_bert_input(loaded.data, 8192)
    assert float(normed[:, :3].norm(dim=1).max()) == pytest.approx(1.0, abs=1e-6)
    assert normed[:, :3].mean(0).abs().max() < 1e-6 and torch.equal(normed[:, 3:], loaded.data[:, 3:])
    assert tiny_point_bert_encoder(point_bert_file).encode(loaded.data).shape == (17, 32)


# --- the listing and the commands -----------------------------------------------------------

def test_every_encoder_spec_is_listed_with_its_shape(capsys):
    from composition.cli import main

    assert main(["encoders", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["encoders"]}
    assert {s.kind for s in list_encoder_specs()} == set(rows)
    assert (rows["beats"]["tokens"], rows["beats"]["feature_dim"]) == (512, 768)
    assert (rows["languagebind-video"]["tokens"], rows["languagebind-video"]["feature_dim"]) == (2056, 1024)
    assert (rows["point-bert"]["tokens"], rows["point-bert"]["feature_dim"]) == (513, 384)
    assert rows["efficientnet-lite0"]["tokens"] == 49 and rows["point-bert"]["modality"] == "point"
    assert all(rows[k]["weight_source"] for k in ("beats", "languagebind-video", "point-bert"))
    assert rows["beats"]["input_limits"] == {"sample_rate": 16000}
    assert rows["languagebind-video"]["input_limits"] == {"num_frames": 8, "frame_sampling": "linspace",
                                                          "frame_max_side": None, "pad_square": False}
    assert rows["point-bert"]["input_limits"] == {"num_points": 8192, "keep_exact": True}
    assert rows["clip"]["input_limits"] == {"alpha": "drop", "max_side": None, "pad_square": False}
    from modalities import get_modality
    for name in ("beats", "languagebind-video", "point-bert", "clip"):  # every declared limit is one the decoder knows
        get_modality(rows[name]["modality"]).with_limits(**rows[name]["input_limits"])
    assert main(["encoders"]) == 0 and "point-bert" in capsys.readouterr().out


def test_default_weights_must_give_the_declared_shape(monkeypatch):
    from modalities.encoders import clear_encoder_cache
    from modalities.encoders import registry

    enc = get_encoder("point-fps-knn")  # seeded default weights: matches its spec
    assert (enc.num_tokens, enc.feature_dim) == (encoder_spec("point-fps-knn").num_tokens,
                                                 encoder_spec("point-fps-knn").feature_dim)
    spec = encoder_spec("point-fps-knn")
    monkeypatch.setitem(registry._REGISTRY, "point-fps-knn", registry.EncoderSpec(
        spec.kind, spec.modality, spec.factory, spec.offline, spec.description, spec.weight_source, 65, spec.feature_dim))
    clear_encoder_cache()
    with pytest.raises(RuntimeError, match="declares num_tokens=65"):
        get_encoder("point-fps-knn")
    clear_encoder_cache()


def test_encode_command_writes_the_pipelines_features(tmp_path, beats_file, capsys):
    from safetensors import safe_open

    from composition.cli import main
    from modalities import get_modality

    from tests.media_factory import sine_wav

    wavs = [sine_wav(tmp_path / "a.wav", 1.5), sine_wav(tmp_path / "b.wav", 3.0, freq=880.0)]
    out = tmp_path / "features.safetensors"
    assert main(["encode", "--encoder", "beats", "--weights", str(beats_file), *map(str, wavs), "--out", str(out)]) == 0
    enc = get_encoder("beats", str(beats_file))
    with safe_open(str(out), "pt") as f:
        files = json.loads(f.metadata()["files"])
        assert [r["file"] for r in files] == ["a.wav", "b.wav"]
        for i, wav in enumerate(wavs):
            assert torch.equal(f.get_tensor(f"features.{i}"), enc.encode(get_modality("audio").load(wav).data))
    assert main(["encode", "--encoder", "nope", str(wavs[0]), "--out", str(out)]) == 2
    assert "unknown encoder kind" in capsys.readouterr().err
    assert main(["encode", "--encoder", "beats", str(wavs[0]), "--out", str(out)]) == 2  # no weights
    assert "BEATs_iter3_plus_AS2M.pt" in capsys.readouterr().err
    assert main(["encode", "--encoder", "beats", "--weights", str(beats_file), str(wavs[0]),
                 "--out", str(tmp_path / "x.npy")]) == 2


# --- full size on a GPU (skipped without CUDA) -------------------------------------------------

@pytest.mark.gpu
@pytest.mark.slow
def test_full_size_encoders_on_cuda_bf16_match_fp32_and_report_cost():
    """Released sizes with random weights: bf16 features close to fp32 ones; prints peak memory and time."""
    import time

    cuda = torch.device("cuda")
    vcfg, frames = LB._vision_config(LB.RELEASED_VISION_CONFIG)
    cases = {
        "beats": (lambda: B.BeatsModel(B.BeatsConfig()), B.BeatsEncoder, torch.rand(16000 * 10) * 2 - 1),
        "point-bert": (lambda: PB.PointBertModel(PB.PointBertConfig()), PB.PointBertEncoder, random_cloud(8192, 0)),
        "languagebind-video": (lambda: LB.LanguageBindVisionTower(vcfg, frames), LB.LanguageBindVideoEncoder,
                               random_frames(8, 252, 448, 0)),
    }
    for kind, (build, encoder_type, x) in cases.items():
        torch.manual_seed(0)
        model = build()
        fp32 = encoder_type(model, cuda, torch.float32).encode(x)
        enc = encoder_type(model, cuda, torch.bfloat16)  # converts the same weights in place
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        enc.encode(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        bf16 = enc.encode(x)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
        print(f"{kind}: {tuple(bf16.shape)} bf16 {seconds * 1e3:.1f} ms/input, peak {peak:.0f} MiB (weights + activations)")
        cos = torch.nn.functional.cosine_similarity(bf16.flatten(), fp32.flatten(), dim=0)
        assert bf16.shape == (encoder_spec(kind).num_tokens, encoder_spec(kind).feature_dim)
        assert cos > 0.98, f"{kind}: bf16 diverges from fp32 (cosine {cos:.4f})"
        del model, enc
        torch.cuda.empty_cache()


# --- end to end at tiny sizes: experts naming these encoders compose --------------------------

def test_experts_naming_the_paper_encoders_compose_side_by_side(tmp_path, beats_file, languagebind_folder,
                                                                point_bert_file):
    """expert.json names beats / languagebind-video / point-bert with their weight files; the composer
    encodes each input through the registry and answers NaiveMC, DAMC and every expert in one batch.
    (Random experts with an mlp2x_gelu projector: the paper's audio Q-Former is the importer's part.)"""
    from composition.composer import ComposedModel
    from composition.inputs import ModalInput
    from composition.expert import EncoderRef, Expert, ExpertConfig, ProjectorSpec, save_expert
    import dataclasses

    from composition.random_models import TEST, linear_shapes, random_delta, synthetic_base
    from composition.generate import GenerationConfig

    # The tests' tiny base with room for a DAMC prompt of 512 BEATs + 40 video + 17 point tokens (its own context is 512).
    base = synthetic_base(dataclasses.replace(TEST, max_positions=2048))
    hidden = base.model.get_input_embeddings().weight.shape[1]
    shapes = linear_shapes(base.model)
    encoders = {"audio": ("beats", str(beats_file)), "video": ("languagebind-video", str(languagebind_folder)),
                "point": ("point-bert", str(point_bert_folder(point_bert_file)))}
    g = torch.Generator().manual_seed(0)
    cm = ComposedModel(base)
    for modality, (kind, source) in encoders.items():
        for training in ("decoupled", "shared"):
            name = modality if training == "decoupled" else f"{modality}-shared"
            config = ExpertConfig(name=name, modality=modality, training=training, base_model_name=base.name,
                                  base_model_sha256=base.sha256, encoder=EncoderRef(kind, source, 32),
                                  projector=ProjectorSpec("mlp2x_gelu", 32, hidden), prefix_tokens=1, suffix_tokens=1)
            deltas = {n: random_delta(shapes, 2, g) for n in config.delta_names}
            expert = Expert(config, deltas, config.projector.build(), torch.randn(1, hidden, generator=g),
                            torch.randn(1, hidden, generator=g))
            cm.load_expert(save_expert(expert, tmp_path / name))
            assert json.loads((tmp_path / name / "expert.json").read_text())["encoder"]["kind"] == kind
    inputs = [ModalInput("audio", torch.rand(16000) * 2 - 1, "a.wav"),
              ModalInput("video", random_frames(8, 28, 28, 0), "v.mp4"),
              ModalInput("point", random_cloud(256, 0), "p.ply")]
    answers = cm.compare("what is this?", inputs, ["NaiveMC", "DAMC", "expert:audio", "expert:video", "expert:point"],
                         config=GenerationConfig(max_new_tokens=3))
    assert [a.name for a in answers] == ["NaiveMC", "DAMC", "expert:audio", "expert:video", "expert:point"]
    assert all(a.new_tokens >= 1 for a in answers)
    assert sorted(answers[0].experts) == ["audio-shared", "point-shared", "video-shared"]
    assert sorted(answers[1].experts) == ["audio", "point", "video"]
    prompt_lengths = {a.name: a.prompt_tokens for a in answers}  # each encoder's tokens reach the prompt
    # 512 BEATs tokens vs 17 Point-BERT tokens (the rest of the two prompts differs by a few text tokens)
    assert abs(prompt_lengths["expert:audio"] - prompt_lengths["expert:point"] - (512 - 17)) <= 8
    assert prompt_lengths["DAMC"] > prompt_lengths["expert:video"] + 512


def test_hub_references_and_a_hub_file_that_is_not_available(monkeypatch, tmp_path):
    """'owner/name' and 'owner/name:file' name hub repositories (fetched through the hub cache); local paths win."""
    import huggingface_hub

    from modalities.encoders.foreign_weights import hub_reference

    assert hub_reference("LanguageBind/LanguageBind_Video_merge") == ("LanguageBind/LanguageBind_Video_merge", None)
    assert hub_reference(PB.HUB_SOURCE) == ("RunsenXu/PointLLM_7B_v1.1_init", "point_bert_v1.2.pt")
    assert hub_reference(str(tmp_path)) is None and hub_reference("/no/such/file.pt") is None
    assert hub_reference("owner/name:../secret") is None and hub_reference("a\0b/c") is None

    def offline(*args, **kwargs):
        raise OSError("not in the cache and HF_HUB_OFFLINE=1")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(EncoderError, match="point_bert_v1.2.pt of the hub repository RunsenXu/PointLLM_7B_v1.1_init is not available"):
        get_encoder("point-bert", PB.HUB_SOURCE)
    with pytest.raises(EncoderError, match="config.json of the hub repository LanguageBind/LanguageBind_Video_merge"):
        get_encoder("languagebind-video", LB.HUB_ID)
