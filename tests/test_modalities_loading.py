"""Modalities load real media (gradio's bundled files) and generated edge cases into the right tensors."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import media_factory as mf
from modalities import (MODALITY_NAMES, LoadedInput, ModalityError, get_modality, list_modalities, modality_for_file,
                        point_cloud_to_ply_bytes, save_ply)

ASSETS = mf.media_assets()
# librosa's audioread fallback (m4a, broken mp3) announces itself; expected, not a test problem.
pytestmark = [pytest.mark.filterwarnings("ignore:PySoundFile failed:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*audioread.*:FutureWarning")]
needs_assets = pytest.mark.skipif(ASSETS is None, reason="gradio media_assets not installed")


def asset_files(kind: str, *suffixes: str) -> list[Path]:
    if ASSETS is None:
        return []
    return sorted(p for p in (ASSETS / kind).iterdir() if p.suffix.lower() in suffixes)


# -- registry ---------------------------------------------------------------------------------
def test_registry_names_and_order():
    assert MODALITY_NAMES == ("image", "audio", "video", "point")
    assert list_modalities() == list(MODALITY_NAMES)
    for name in MODALITY_NAMES:
        m = get_modality(name)
        assert m.name == name and m.placeholder == f"<{name}>"
        assert m.extensions and all(e.startswith(".") and e == e.lower() for e in m.extensions)
        assert dataclasses.is_dataclass(m.limits)
        with pytest.raises(dataclasses.FrozenInstanceError):
            m.limits.max_bytes = 1
    assert get_modality("image").label == "image"


def test_unknown_modality_names_value_and_choices():
    with pytest.raises(ModalityError) as err:
        get_modality("sound")
    assert "'sound'" in str(err.value) and "image, audio, video, point" in str(err.value)
    assert issubclass(ModalityError, ValueError)


@pytest.mark.parametrize("name, modality", [("a.JPG", "image"), ("b.wav", "audio"), ("c.mkv", "video"),
                                            ("d.npy", "point"), ("e.glb", "point"), ("/x/y/f.m4a", "audio")])
def test_modality_for_file(name, modality):
    assert modality_for_file(name) == modality


def test_with_limits_validates():
    point = get_modality("point").with_limits(num_points=64, seed=3)
    assert point.limits.num_points == 64 and point.limits.seed == 3
    assert get_modality("point").limits.num_points == 2048  # the registered instance is untouched
    for bad in ({"num_points": 0}, {"sampling": "grid"}, {"nonsense": 1}, {"seed": -1}):
        with pytest.raises(ModalityError):
            get_modality("point").with_limits(**bad)
    with pytest.raises(ModalityError):
        get_modality("image").with_limits(pad_color=(2, 0, 0))


def test_import_is_light_and_never_imports_gradio():
    code = ("import sys, modalities; heavy = [m for m in ('gradio', 'librosa', 'decord', 'open3d', 'plotly') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


# -- images -----------------------------------------------------------------------------------
def check_image(loaded: LoadedInput):
    data = loaded.data
    assert data.dtype == torch.float32 and data.ndim == 3 and data.shape[0] == 3
    assert data.shape[1] == data.shape[2] <= 1024
    assert 0.0 <= float(data.min()) and float(data.max()) <= 1.0


@needs_assets
@pytest.mark.parametrize("path", asset_files("images", ".jpg", ".jpeg", ".png", ".gif"), ids=lambda p: p.name)
def test_real_images_load_and_preview(path):
    m = get_modality("image")
    loaded = m.load(path)
    check_image(loaded)
    assert loaded.source_name == path.name and str(path.parent) not in repr(loaded.source_name)
    thumb = m.preview(loaded)["thumbnail"]
    assert thumb.mode == "RGB" and max(thumb.size) <= 256


@needs_assets
def test_animated_gif_uses_first_frame_and_downscales():
    loaded = get_modality("image").load(asset("images", "screenshot.gif"))
    assert loaded.meta["frames"] > 1 and loaded.data.shape[-1] == 1024
    assert any("first frame" in n for n in loaded.notes) and any("downscaled" in n for n in loaded.notes)


def asset(kind, name):
    return mf.asset(kind, name)


def test_rgba_composited_on_white(tmp_path):
    from PIL import Image

    im = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    im.paste((0, 0, 255, 255), (0, 0, 4, 8))  # opaque blue left half
    im.save(tmp_path / "rgba.png")
    loaded = get_modality("image").load(tmp_path / "rgba.png")
    assert torch.allclose(loaded.data[:, 0, 6], torch.ones(3))  # transparent -> white
    assert torch.allclose(loaded.data[:, 0, 1], torch.tensor([0.0, 0.0, 1.0]))
    assert any("white" in n for n in loaded.notes)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1", "LA"])
def test_other_modes_become_rgb(tmp_path, mode):
    from PIL import Image

    im = Image.new("RGB", (12, 12), (200, 100, 50)).convert(mode)
    path = tmp_path / ("im.jpg" if mode == "CMYK" else "im.png")
    im.save(path)
    check_image(get_modality("image").load(path))


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    array = np.full((6, 6), 32768, dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "deep.png")
    loaded = get_modality("image").load(tmp_path / "deep.png")
    assert torch.allclose(loaded.data, torch.full_like(loaded.data, 32768 / 65535), atol=1e-4)


def test_exif_orientation_applied_then_padded(tmp_path):
    m = get_modality("image")
    loaded = m.load(mf.exif_rotated_jpeg(tmp_path / "rot.jpg", 20, 10, orientation=6))
    assert loaded.meta["original_size"] == (20, 10)
    assert loaded.meta["oriented_size"] == (10, 20) and loaded.meta["size"] == (10, 20)
    assert loaded.meta["exif_orientation"] == 6
    data = loaded.data
    assert data.shape == (3, 20, 20)
    pad = torch.tensor(m.limits.pad_color)
    assert torch.allclose(data[:, :, 0], pad[:, None].expand(3, 20))  # left/right columns are padding
    # Orientation 6 = rotate 90° clockwise for display: the red left half ends on top.
    top, bottom = data[:, 2, 10], data[:, 17, 10]
    assert top[0] > 0.8 and top[2] < 0.2 and bottom[2] > 0.8 and bottom[0] < 0.2


def test_wide_image_downscaled_to_max_side(tmp_path):
    from PIL import Image

    Image.new("RGB", (2000, 500), (10, 20, 30)).save(tmp_path / "wide.png")
    loaded = get_modality("image").load(tmp_path / "wide.png")
    assert loaded.meta["size"] == (1024, 256) and loaded.data.shape == (3, 1024, 1024)
    assert any("2000×500 to 1024×256" in n for n in loaded.notes)


def test_image_is_deterministic():
    if ASSETS is None:
        pytest.skip("no assets")
    m = get_modality("image")
    assert torch.equal(m.load(asset("images", "cheetah.jpg")).data, m.load(asset("images", "cheetah.jpg")).data)


# -- audio ------------------------------------------------------------------------------------
def check_audio(loaded: LoadedInput):
    data = loaded.data
    assert data.dtype == torch.float32 and data.ndim == 1 and 0 < data.numel() <= 30 * 16_000
    assert float(data.abs().max()) <= 1.0 and loaded.meta["sample_rate"] == 16_000


@needs_assets
@pytest.mark.parametrize("path", asset_files("audio", ".wav", ".mp3"), ids=lambda p: p.name)
def test_real_audio_loads(path):
    loaded = get_modality("audio").load(path)
    check_audio(loaded)
    expected = min(loaded.meta["duration_s"], 30.0) * 16_000
    assert abs(loaded.data.numel() - expected) <= 0.1 * 16_000  # mp3 headers only estimate the length


@needs_assets
def test_audio_preview_figures():
    import plotly.graph_objects as go

    m = get_modality("audio")
    preview = m.preview(m.load(asset("audio", "cantina.wav")))
    assert isinstance(preview["waveform"], go.Figure) and isinstance(preview["spectrogram"], go.Figure)
    assert preview["spectrogram"].data[0].type == "heatmap"


def test_short_wav_is_fine(tmp_path):
    loaded = get_modality("audio").load(mf.sine_wav(tmp_path / "short.wav", 0.05))
    assert loaded.data.numel() == 800 and not loaded.notes


def test_long_wav_clipped_with_note(tmp_path):
    loaded = get_modality("audio").load(mf.sine_wav(tmp_path / "long.wav", 40.0))
    assert loaded.data.numel() == 30 * 16_000
    assert "audio clipped to the first 30.0 s of 40.0 s" in loaded.notes
    assert loaded.meta["duration_s"] == pytest.approx(40.0)


def test_stereo_44k_flac_and_ogg(tmp_path):
    m = get_modality("audio")
    for name in ("stereo.flac", "stereo.ogg"):
        loaded = m.load(mf.sine_wav(tmp_path / name, 1.0, rate=44_100, channels=2))
        check_audio(loaded)
        assert loaded.meta["channels"] == 2 and abs(loaded.data.numel() - 16_000) <= 160
        assert any("mono" in n for n in loaded.notes) and any("44100 Hz" in n for n in loaded.notes)


@pytest.mark.skipif(__import__("shutil").which("ffmpeg") is None, reason="needs ffmpeg")
def test_m4a_through_fallback_decoder(tmp_path):
    wav = mf.sine_wav(tmp_path / "src.wav", 1.0)
    m4a = tmp_path / "clip.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True, timeout=60)
    check_audio(get_modality("audio").load(m4a))


# -- video ------------------------------------------------------------------------------------
def check_video(loaded: LoadedInput, frames: int = 8):
    data = loaded.data
    assert data.dtype == torch.float32 and data.ndim == 4 and data.shape[:2] == (frames, 3)
    assert max(data.shape[2:]) <= 448
    assert 0.0 <= float(data.min()) and float(data.max()) <= 1.0


@needs_assets
@pytest.mark.parametrize("path", asset_files("videos", ".mp4", ".avi"), ids=lambda p: p.name)
def test_real_videos_load(path):
    loaded = get_modality("video").load(path)
    check_video(loaded)
    total = loaded.meta["frame_count"]
    assert loaded.meta["frame_indices"] == [int((i + 0.5) * total / 8) for i in range(8)]


@needs_assets
def test_video_downscaled_keeps_aspect_and_previews():
    m = get_modality("video")
    loaded = m.load(asset("videos", "a.mp4"))  # 1920×1080
    assert loaded.data.shape[2:] == (448, 448)  # 252x448 frames padded to square
    strip = m.preview(loaded)["keyframes"]
    assert strip.height == m.limits.strip_height and strip.width >= 8 * strip.height


@pytest.fixture(scope="module")
def test_video(tmp_path_factory):
    if __import__("shutil").which("ffmpeg") is None:
        pytest.skip("needs ffmpeg")
    return mf.ffmpeg_video(tmp_path_factory.mktemp("vid") / "pattern.mp4", seconds=2.0, size="320x240", fps=10)


def test_generated_video_frame_centres_and_determinism(test_video):
    m = get_modality("video")
    first, second = m.load(test_video), m.load(test_video)
    check_video(first)
    assert first.meta["frame_count"] == 20 and first.meta["frame_indices"] == [1, 3, 6, 8, 11, 13, 16, 18]
    assert first.data.shape == (8, 3, 320, 320)  # 240x320 padded to square
    assert torch.equal(first.data, second.data)
    four = m.with_limits(num_frames=4).load(test_video)
    assert four.data.shape[0] == 4 and four.meta["frame_indices"] == [2, 7, 12, 17]


def test_short_video_repeats_frames(tmp_path):
    if __import__("shutil").which("ffmpeg") is None:
        pytest.skip("needs ffmpeg")
    path = mf.ffmpeg_video(tmp_path / "tiny.webm", seconds=0.3, size="64x48", fps=10)
    loaded = get_modality("video").load(path)
    check_video(loaded)
    assert loaded.meta["frame_count"] == 3 and any("repeat" in n for n in loaded.notes)


@pytest.mark.parametrize("ext", [".webm", ".mkv", ".mov", ".avi"])
def test_container_formats(tmp_path, ext):
    if __import__("shutil").which("ffmpeg") is None:
        pytest.skip("needs ffmpeg")
    loaded = get_modality("video").load(mf.ffmpeg_video(tmp_path / f"clip{ext}", seconds=1.0, size="160x120", fps=10))
    check_video(loaded)
    assert loaded.data.shape == (8, 3, 160, 160)  # 160x120 frames padded to square


@needs_assets
def test_video_without_ffprobe_reads_size_from_a_frame(monkeypatch):
    import modalities.video as video

    m = get_modality("video")
    with_probe = m.load(asset("videos", "a.mp4"))
    monkeypatch.setattr(video, "_ffprobe", lambda file, timeout=10.0: None)
    without = m.load(asset("videos", "a.mp4"))
    assert (without.meta["width"], without.meta["height"]) == (1920, 1080)
    assert torch.equal(with_probe.data, without.data)


# -- point clouds -----------------------------------------------------------------------------
def check_points(loaded: LoadedInput, count: int = 2048):
    data = loaded.data
    assert data.dtype == torch.float32 and data.shape == (count, 6)
    assert float(data[:, :3].norm(dim=1).max()) <= 1.0 + 1e-5
    assert 0.0 <= float(data[:, 3:].min()) and float(data[:, 3:].max()) <= 1.0


@needs_assets
@pytest.mark.parametrize("path", asset_files("models3d", ".obj", ".glb", ".gltf", ".stl"), ids=lambda p: p.name)
def test_real_meshes_load_and_preview(path):
    import plotly.graph_objects as go

    m = get_modality("point")
    loaded = m.load(path)
    check_points(loaded)
    assert loaded.meta["source"] == "mesh"
    preview = m.preview(loaded)
    assert isinstance(preview["scatter"], go.Figure) and preview["scatter"].data[0].type == "scatter3d"
    assert preview["scatter"].layout.scene.aspectmode == "cube"
    assert preview["ply_bytes"].startswith(b"ply\n")


@needs_assets
def test_mesh_colours_from_texture_or_grey():
    m = get_modality("point")
    duck = m.load(asset("models3d", "Duck.glb"))
    assert duck.meta["has_color"] and duck.meta["color_source"] == "texture"
    mean = duck.data[:, 3:].mean(dim=0)
    assert mean[0] > 0.8 and mean[2] < 0.2  # a yellow duck
    bunny = m.load(asset("models3d", "Bunny.obj"))
    assert not bunny.meta["has_color"] and torch.all(bunny.data[:, 3:] == 0.5)
    assert m.load(asset("models3d", "face.obj")).meta["color_source"] == "vertex colours"


def cloud(n: int = 5000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3)) * [3.0, 1.0, 0.5] + [10.0, -4.0, 2.0]


def test_npy_xyz_and_xyzrgb_255(tmp_path):
    m = get_modality("point")
    np.save(tmp_path / "xyz.npy", cloud().astype(np.float32))
    plain = m.load(tmp_path / "xyz.npy")
    check_points(plain)
    assert not plain.meta["has_color"] and float(plain.data[:, :3].norm(dim=1).max()) == pytest.approx(1.0, abs=1e-5)
    rgb = np.tile([[255.0, 128.0, 0.0]], (5000, 1))
    np.save(tmp_path / "xyzrgb.npy", np.concatenate([cloud(), rgb], axis=1))
    coloured = m.load(tmp_path / "xyzrgb.npy")
    check_points(coloured)
    assert coloured.meta["has_color"] and coloured.meta["color_range"] == "0..255"
    assert torch.allclose(coloured.data[0, 3:], torch.tensor([1.0, 128 / 255, 0.0]))


def test_text_xyz_and_pts(tmp_path):
    m = get_modality("point")
    points = cloud(500)
    np.savetxt(tmp_path / "a.xyz", points)
    check_points(m.load(tmp_path / "a.xyz"))
    with open(tmp_path / "b.pts", "w") as f:  # count line, then x y z intensity r g b
        f.write(f"{len(points)}\n")
        for p in points:
            f.write(f"{p[0]} {p[1]} {p[2]} 7 10 200 30\n")
    loaded = m.load(tmp_path / "b.pts")
    check_points(loaded)
    assert torch.allclose(loaded.data[0, 3:], torch.tensor([10, 200, 30]) / 255.0)


def test_ply_and_pcd_from_open3d_and_mesh_ply(tmp_path):
    import open3d as o3d

    m = get_modality("point")
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud(3000)))
    pcd.colors = o3d.utility.Vector3dVector(np.tile([[0.2, 0.4, 0.6]], (3000, 1)))
    for name in ("cloud.ply", "cloud.pcd"):
        o3d.io.write_point_cloud(str(tmp_path / name), pcd)
        loaded = m.load(tmp_path / name)
        check_points(loaded)
        assert torch.allclose(loaded.data[:, 3:].mean(dim=0), torch.tensor([0.2, 0.4, 0.6]), atol=1e-3)
    o3d.io.write_triangle_mesh(str(tmp_path / "box.ply"), o3d.geometry.TriangleMesh.create_box())
    box = m.load(tmp_path / "box.ply")
    check_points(box)
    assert box.meta["source"] == "mesh"


def test_point_determinism_and_seeds(tmp_path):
    np.save(tmp_path / "c.npy", cloud(6000))
    m = get_modality("point")
    a, b = m.load(tmp_path / "c.npy"), m.load(tmp_path / "c.npy")
    assert torch.equal(a.data, b.data)
    other = m.with_limits(seed=1).load(tmp_path / "c.npy")
    assert not torch.equal(a.data, other.data)
    assert torch.equal(other.data, m.with_limits(seed=1).load(tmp_path / "c.npy").data)
    rand = m.with_limits(sampling="random").load(tmp_path / "c.npy")
    assert rand.meta["sampling"] == "random" and torch.equal(rand.data, m.with_limits(sampling="random").load(tmp_path / "c.npy").data)
    # FPS spreads points: its farthest-point coverage radius beats random sampling's.
    full = torch.from_numpy(cloud(6000))
    full = (full - full.mean(0)) / (full - full.mean(0)).norm(dim=1).max()
    cover = lambda d: float(torch.cdist(full.float(), d[:, :3]).min(dim=1).values.max())  # noqa: E731
    assert cover(a.data) < cover(rand.data)


def test_small_cloud_repeats_points(tmp_path):
    np.save(tmp_path / "small.npy", cloud(100))
    loaded = get_modality("point").load(tmp_path / "small.npy")
    check_points(loaded)
    assert loaded.meta["sampling"] == "all + repeats" and any("repeated" in n for n in loaded.notes)
    assert torch.unique(loaded.data, dim=0).shape[0] == 100


def test_huge_cloud_thinned_before_fps(tmp_path):
    np.save(tmp_path / "huge.npy", cloud(40_000).astype(np.float32))
    loaded = get_modality("point").load(tmp_path / "huge.npy")
    check_points(loaded)
    assert "random candidates" in loaded.meta["sampling"]


def test_ply_export_round_trip(tmp_path):
    import open3d as o3d

    np.save(tmp_path / "c.npy", np.concatenate([cloud(3000), np.tile([[0.0, 1.0, 0.0]], (3000, 1))], axis=1))
    loaded = get_modality("point").load(tmp_path / "c.npy")
    assert point_cloud_to_ply_bytes(loaded).startswith(b"ply\nformat binary_little_endian 1.0\n")
    out = save_ply(loaded, tmp_path / "out.ply")
    back = o3d.io.read_point_cloud(str(out))
    assert np.allclose(np.asarray(back.points), loaded.data[:, :3].numpy(), atol=1e-6)
    assert np.allclose(np.asarray(back.colors), loaded.data[:, 3:].numpy(), atol=1 / 255)
