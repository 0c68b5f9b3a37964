"""Test media: the real files gradio ships, and small generated edge cases written to a folder.

Run as a script to measure how long refusals take:
    python tests/media_factory.py
"""
from __future__ import annotations

import importlib.util
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np


def media_assets() -> Path | None:
    """gradio's bundled media folder, found without importing gradio (None if gradio is absent)."""
    spec = importlib.util.find_spec("gradio")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "media_assets"
    return folder if folder.is_dir() else None


def asset(kind: str, name: str) -> Path:
    """One bundled file, e.g. asset("images", "cheetah.jpg")."""
    root = media_assets()
    if root is None:
        raise FileNotFoundError("gradio media_assets not found")
    return root / kind / name


# -- images -----------------------------------------------------------------------------------
def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def forged_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose (valid-CRC) IHDR claims width×height: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))
    return path


def exif_rotated_jpeg(path: Path, width: int = 20, height: int = 10, orientation: int = 6) -> Path:
    """A width×height JPEG (left half red, right half blue) tagged with an EXIF orientation."""
    from PIL import Image

    im = Image.new("RGB", (width, height), (255, 0, 0))
    im.paste((0, 0, 255), (width // 2, 0, width, height))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif, quality=95)
    return path


# -- audio ------------------------------------------------------------------------------------
def sine_wav(path: Path, seconds: float, rate: int = 16_000, freq: float = 440.0, amplitude: float = 0.5,
             channels: int = 1, subtype: str | None = None) -> Path:
    import soundfile as sf

    t = np.arange(int(round(seconds * rate))) / rate
    wave = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    sf.write(path, data, rate, subtype=subtype)
    return path


# -- video ------------------------------------------------------------------------------------
def ffmpeg_video(path: Path, seconds: float = 2.0, size: str = "320x240", fps: int = 10) -> Path:
    """A test-pattern video made with ffmpeg (codec chosen by the extension)."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise FileNotFoundError("ffmpeg is not installed")
    codec = ["-c:v", "libvpx", "-b:v", "200k"] if path.suffix == ".webm" else ["-c:v", "mpeg4", "-q:v", "5"]
    subprocess.run([exe, "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=duration={seconds}:size={size}:rate={fps}",
                    *codec, "-pix_fmt", "yuv420p", str(path)], check=True, timeout=60)
    return path


# -- generic ----------------------------------------------------------------------------------
def truncated(src: Path, dst: Path, keep: int = 100) -> Path:
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


class Tripwire:
    """Unpickling this creates `marker`: proof that a loader unpickled data it should not have."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def measure_refusals(folder: Path) -> dict[str, float]:
    """Seconds each kind of refusal takes (median of 5 runs after one warm-up)."""
    import time

    from modalities import ModalityError, get_modality

    cases = {
        "image: 100000x100000 forged PNG": ("image", forged_png(folder / "bomb.png", 100_000, 100_000)),
        "image: text as .png": ("image", _write(folder / "text.png", b"hello, not an image\n")),
        "image: truncated jpg": ("image", truncated(asset("images", "cheetah.jpg"), folder / "cut.jpg")),
        "audio: PNG as .wav": ("audio", _write(folder / "png.wav", asset("images", "logo.png").read_bytes())),
        "audio: truncated wav": ("audio", truncated(asset("audio", "sax.wav"), folder / "cut.wav")),
        "audio: silent wav": ("audio", sine_wav(folder / "silent.wav", 1.0, amplitude=0.0)),
        "video: truncated mp4": ("video", truncated(asset("videos", "a.mp4"), folder / "cut.mp4")),
        "video: zero bytes": ("video", _write(folder / "empty.mp4", b"")),
        "point: pickled npy": ("point", _pickled_npy(folder / "objects.npy")),
        "point: NaN npy": ("point", _nan_npy(folder / "nan.npy")),
    }
    timings = {}
    for label, (modality, path) in cases.items():
        runs = []
        for _ in range(6):
            start = time.perf_counter()
            try:
                get_modality(modality).load(path)
            except ModalityError:
                pass
            else:
                raise AssertionError(f"{label} was accepted")
            runs.append(time.perf_counter() - start)
        timings[label] = float(np.median(runs[1:]))
    return timings


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _pickled_npy(path: Path) -> Path:
    np.save(path, np.array([Tripwire(str(path) + ".unpickled")], dtype=object), allow_pickle=True)
    return path


def _nan_npy(path: Path) -> Path:
    points = np.random.default_rng(0).normal(size=(100, 3))
    points[5, 1] = np.nan
    np.save(path, points)
    return path


if __name__ == "__main__":
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    with tempfile.TemporaryDirectory() as tmp:
        for label, seconds in measure_refusals(Path(tmp)).items():
            print(f"{seconds * 1000:8.2f} ms  {label}")
