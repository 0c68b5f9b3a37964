"""The paper's encoders read every file exactly as the original code does (issue 32).

For each of CLIP (image), LanguageBind (video) and Point-BERT (point cloud), every file of gradio's
media_assets and the repository's examples goes through the studio's full path (file -> the decoder
with the encoder's `input_limits` -> the encoder-side transform -> a random-weight encoder) and is
compared with the original's preprocessing written out from its definitions (tests/paper_media.py)
fed to the same encoder directly. The studio's default decoding (bundled experts, previews) is
checked to be unchanged.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

from tests.media_factory import asset, media_assets  # noqa: E402
from tests.paper_media import (CLIP_MEAN, CLIP_STD, IMAGES, POINTS, VIDEOS, media_files, reference_clip_pixels,  # noqa: E402
                         reference_clip_processor, reference_expand2square, reference_pc_norm, reference_video_frames,
                         reference_video_pixels, relative_error, write_tiny_clip)

from modalities import get_modality  # noqa: E402
from modalities.encoders import encoder_spec, get_encoder  # noqa: E402
from modalities.encoders import clip as C  # noqa: E402
from modalities.encoders import languagebind_video as LB  # noqa: E402
from modalities.encoders import point_bert as PB  # noqa: E402
from modalities.image import DROPPED_ALPHA_NOTE, IMAGENET_MEAN  # noqa: E402

needs_media = pytest.mark.skipif(media_assets() is None, reason="gradio media_assets not installed")
TRANSPARENT = ("avatar.png", "logo.png", "hf-logo_transpng.png", "bus.png")


def paper_form(modality: str, kind: str):
    """The decoder as the composer runs it for this encoder kind (its input_limits)."""
    return get_modality(modality).with_limits(**encoder_spec(kind).input_limits)


def ids(files):
    return [f.name for f in files]


# --- CLIP: the image path ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "clip-vit-large-patch14-336")


@pytest.fixture(scope="module")
def processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})


@needs_media
@pytest.mark.parametrize("path", media_files("images", IMAGES), ids=ids(media_files("images", IMAGES)))
def test_clip_pixels_equal_the_image_processor_after_expand2square(path, processor):
    """Decoder (alpha dropped, full size, not padded) + our transform == convert('RGB') + expand2square +
    CLIPImageProcessor, to 1e-6 (measured: exactly equal)."""
    loaded = paper_form("image", "clip").load(path)
    ours = C.clip_pixels(loaded.data, processor)
    want = reference_clip_pixels(path, processor)
    assert ours.shape == want.shape == (3, 336, 336)
    assert float((ours - want).abs().max()) <= 1e-6


@needs_media
@pytest.mark.parametrize("name", ["cheetah.jpg", "tower.jpg", "avatar.png", "cheetah1.jpg"])
def test_the_pil_image_processor_is_the_one_the_original_ran(name, processor):
    """CLIPImageProcessorPil (transformers 5) == transformers 4.31's CLIPImageProcessor written out, to 1e-6."""
    from PIL import Image

    image = reference_expand2square(Image.open(asset("images", name)).convert("RGB"), (122, 116, 104))
    ours = processor.preprocess(image, return_tensors="pt")["pixel_values"][0].numpy()
    assert np.abs(ours - reference_clip_processor(image)).max() <= 1e-6
    wide = Image.open(asset("images", name)).convert("RGB")  # also without the square (crop path)
    assert np.abs(processor.preprocess(wide, return_tensors="np")["pixel_values"][0] - reference_clip_processor(wide)).max() <= 1e-6


@needs_media
@pytest.mark.parametrize("name", TRANSPARENT)
def test_a_transparent_image_gives_the_pixels_of_convert_rgb(name):
    from PIL import Image

    path = asset("images", name)
    loaded = paper_form("image", "clip").load(path)
    want = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    assert torch.equal(loaded.data, want)
    assert DROPPED_ALPHA_NOTE in loaded.notes
    default = get_modality("image").load(path)  # the studio's own form is unchanged: composited on white
    assert "transparent areas were composited on white" in default.notes


def test_an_exif_rotated_photo_is_read_upright_and_the_note_says_the_original_would_not(tmp_path):
    from PIL import Image, ImageOps

    from tests.media_factory import exif_rotated_jpeg

    path = exif_rotated_jpeg(tmp_path / "phone.jpg", 20, 10, orientation=6)
    loaded = paper_form("image", "clip").load(path)
    upright = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    assert torch.equal(loaded.data, torch.from_numpy(np.asarray(upright, dtype=np.float32) / 255).permute(2, 0, 1))
    assert loaded.data.shape == (3, 20, 10)
    assert "EXIF orientation 6 applied (the original code reads the stored, unrotated pixels)" in loaded.notes


@needs_media
@pytest.mark.parametrize("name", ["cheetah.jpg", "tower.jpg", "groot.jpeg"])
def test_a_non_square_image_is_padded_with_the_clip_mean_not_the_imagenet_mean(name, processor):
    loaded = paper_form("image", "clip").load(asset("images", name))
    _, h, w = loaded.data.shape
    assert h != w and loaded.meta.get("padded_side") is None  # the decoder left it unpadded
    pixels = C.clip_pixels(loaded.data, processor)
    pad = (torch.tensor([122, 116, 104]) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    corner = pixels[:, 0, 0]  # in the padding: the top rows of a wide image, the left columns of a tall one
    assert torch.allclose(corner, pad.float(), atol=1e-6)
    imagenet = (torch.tensor(IMAGENET_MEAN) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert (corner - imagenet).abs().max() > 0.02


@needs_media
@pytest.mark.parametrize("path", media_files("images", IMAGES), ids=ids(media_files("images", IMAGES)))
def test_clip_full_path_equals_the_encoder_fed_the_reference(path, clip_folder):
    """file -> decoder -> transform -> random CLIP, against the same CLIP fed the original's pixels, to 1e-5."""
    encoder = get_encoder("clip", str(clip_folder))
    assert encoder.num_tokens == 576 and encoder.feature_dim == 24
    ours = encoder.encode(paper_form("image", "clip").load(path).data)
    pixels = reference_clip_pixels(path, encoder.processor)
    with torch.no_grad():
        want = encoder.model(pixel_values=pixels[None], output_hidden_states=True).hidden_states[-2][0, 1:]
    assert relative_error(ours, want) <= 1e-5


def test_clip_reads_the_checkpoints_own_preprocessor_config(clip_folder):
    encoder = get_encoder("clip", str(clip_folder))
    assert encoder.processor.size["shortest_edge"] == 336 and encoder.processor.crop_size["height"] == 336
    assert encoder.processor.resample == 3 and tuple(encoder.processor.image_mean) == CLIP_MEAN
    assert C.pad_colour(encoder.processor.image_mean) == (122, 116, 104)
    assert dict(encoder_spec("clip").input_limits) == {"alpha": "drop", "max_side": None, "pad_square": False}


# --- LanguageBind: the video path -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def languagebind(tmp_path_factory):
    from tests.test_paper_encoders import tiny_languagebind_config, tiny_languagebind_state, write_languagebind_folder

    folder = write_languagebind_folder(tmp_path_factory.mktemp("lb") / "LanguageBind_Video_merge",
                                       tiny_languagebind_state(tiny_languagebind_config(), seed=3))
    return get_encoder("languagebind-video", str(folder))


@needs_media
def test_a_209_frame_video_gives_the_originals_frames_at_full_resolution():
    path = asset("videos", "a.mp4")
    loaded = paper_form("video", "languagebind-video").load(path)
    assert loaded.meta["frame_count"] == 209
    assert loaded.meta["frame_indices"] == [0, 29, 59, 89, 118, 148, 178, 208]
    assert tuple(loaded.data.shape) == (8, 3, 1080, 1920)  # full resolution, not padded, reaches the transform
    _, frames = reference_video_frames(path)
    assert torch.equal(loaded.data, frames.permute(0, 3, 1, 2).float() / 255)
    default = get_modality("video").load(path)  # the studio's own form is unchanged: segment centres at 448
    assert default.meta["frame_indices"] == [13, 39, 65, 91, 117, 143, 169, 195] and default.data.shape[-1] == 448


@needs_media
@pytest.mark.parametrize("path", media_files("videos", VIDEOS), ids=ids(media_files("videos", VIDEOS)))
def test_languagebind_full_path_equals_the_encoder_fed_the_reference(path, languagebind):
    """file -> decoder -> transform -> random tower vs the original's transform fed to the same tower:
    pixels to 1e-6 (measured: equal), features to 1e-5."""
    loaded = paper_form("video", "languagebind-video").load(path)
    indices, _ = reference_video_frames(path)
    assert loaded.meta["frame_indices"] == [int(i) for i in indices]
    pixels = LB.video_input(loaded.data, 8, languagebind.resolution)
    want_pixels = reference_video_pixels(path, languagebind.resolution)
    assert float((pixels - want_pixels).abs().max()) <= 1e-6
    ours = languagebind.encode(loaded.data)
    with torch.no_grad():
        want = languagebind.tower(want_pixels[None]).flatten(1, 2)[0]
    assert relative_error(ours, want) <= 1e-5


def test_linspace_frame_indices():
    from modalities.video import linspace_indices, segment_centres

    assert linspace_indices(209, 8) == [0, 29, 59, 89, 118, 148, 178, 208]
    assert linspace_indices(3, 8) == [0, 0, 0, 0, 1, 1, 1, 2] and linspace_indices(8, 8) == list(range(8))
    assert linspace_indices(901, 8) == [int(i) for i in np.linspace(0, 900, 8, dtype=int)]
    assert segment_centres(209, 8) == [13, 39, 65, 91, 117, 143, 169, 195]  # the studio's default rule
    assert LB.frame_indices(209) == linspace_indices(209, 8)


# --- Point-BERT: the point path --------------------------------------------------------------------------

TINY_8192_YAML = """model : {
  NAME: PointTransformer, trans_dim: 32, depth: 2, num_heads: 4, group_size: 8, num_group: 16, encoder_dims: 24,
  point_dims: 3, use_max_pool: false
}
npoints: 8192
"""


@pytest.fixture(scope="module")
def point_bert(tmp_path_factory):
    """The tiny Point-BERT of test_paper_encoders, configured for 8192 points as the released one is."""
    from tests.test_paper_encoders import tiny_point_bert_state

    folder = tmp_path_factory.mktemp("pb8192")
    torch.save(tiny_point_bert_state(seed=2), folder / "point_bert_tiny.pt")
    (folder / "PointTransformer_tiny_8192.yaml").write_text(TINY_8192_YAML)
    encoder = get_encoder("point-bert", str(folder))
    assert encoder.cfg.npoints == 8192
    return encoder


@needs_media
@pytest.mark.parametrize("path", media_files("models3d", POINTS), ids=ids(media_files("models3d", POINTS)))
def test_point_bert_full_path_equals_the_encoder_fed_the_reference(path, point_bert):
    """file -> decoder (8192 points) -> transform -> random Point-BERT vs PointLLM's pc_norm of the same 8192
    points fed to the model directly (same first point), to 1e-5."""
    loaded = paper_form("point", "point-bert").load(path)
    assert tuple(loaded.data.shape) == (8192, 6)
    ours = point_bert.encode(loaded.data)
    reference = torch.from_numpy(reference_pc_norm(loaded.data.numpy().astype(np.float32))).float()
    assert float((PB.point_bert_input(loaded.data, 8192) - reference).abs().max()) <= 1e-6
    with torch.no_grad():
        want = point_bert.model(reference[None])[0]
    assert relative_error(ours, want) <= 1e-5


@needs_media
def test_an_8192_point_npy_is_read_as_the_original_reads_it(tmp_path, point_bert):
    """The original's clouds are (8192, 6) .npy files (xyz + rgb in [0, 1]) read as stored: the decoder keeps their
    order (its sampling would start at another point), so the full path equals np.load + pc_norm."""
    rng = np.random.default_rng(0)
    cloud = paper_form("point", "point-bert").load(asset("models3d", "Duck.glb")).data.numpy()
    cloud = cloud[rng.permutation(8192)] * np.array([2.5, 2.5, 2.5, 1, 1, 1], dtype=np.float32) + np.array([1, -2, 3, 0, 0, 0], dtype=np.float32)
    np.save(tmp_path / "object_8192.npy", cloud.astype(np.float32))
    loaded = paper_form("point", "point-bert").load(tmp_path / "object_8192.npy")
    assert loaded.meta["sampling"] == "as stored"
    reference = torch.from_numpy(reference_pc_norm(np.load(tmp_path / "object_8192.npy"))).float()
    assert float((PB.point_bert_input(loaded.data, 8192) - reference).abs().max()) <= 1e-5
    with torch.no_grad():
        want = point_bert.model(reference[None])[0]
    assert relative_error(point_bert.encode(loaded.data), want) <= 1e-5
    assert get_modality("point").with_limits(num_points=8192).load(tmp_path / "object_8192.npy").meta["sampling"] == "fps"


# --- the card notes reach an imported expert's answer ------------------------------------------------------

@needs_media
def test_an_imported_experts_card_says_transparency_was_dropped(tmp_path, clip_folder):
    from composition.composer import ComposedModel
    from composition.expert import load_expert
    from composition.generate import GenerationConfig
    from composition.importers import import_modelcompose
    from composition.inputs import ModalInput, decoder_needs
    from composition.random_models import ModelShape, synthetic_base
    from tests import modelcompose_checkpoints as mc

    src = mc.single(tmp_path / "vision-damc", "vision", "modal+language")  # projector reads 24-d features
    (folder,) = import_modelcompose([str(src)], tmp_path / "out", encoder_sources={"image": str(clip_folder)})
    expert = load_expert(folder)
    cm = ComposedModel(synthetic_base(ModelShape("tiny-mc", 64, 2, 4, 128)), [expert])
    item = ModalInput.open("image", asset("images", "avatar.png"), decoder_needs([expert])["image"])
    (answer,) = cm.compare("What is it?", [item], ["expert:mc-image"], config=GenerationConfig(max_new_tokens=1))
    assert f"avatar.png: {DROPPED_ALPHA_NOTE}" in answer.notes
    assert answer.prompt_tokens > 576  # the CLIP's 576 patch tokens reached the prompt
