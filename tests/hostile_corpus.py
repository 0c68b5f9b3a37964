"""A hostile and malformed input corpus: every file must be refused with a clear message.

Inputs of all four modalities (wrong content for the extension, truncated, pickled,
decompression-bomb and huge-count headers, over the size cap, links out of the folder,
special files), expert folders (corrupt, truncated or pickled safetensors, wrong shapes,
huge headers, wrong types in ``expert.json``, path-traversal names, links out of the
expert folder) and MCUB files (absolute and ``..`` paths, links out of the JSON's folder,
wrong types). Written deterministically (fixed seeds, no clock) into a folder:

    python tests/hostile_corpus.py OUT_DIR        # writes the corpus, prints one line per case

    from tests.hostile_corpus import build_corpus, case_specs
    cases = build_corpus(tmp_path)                # list[Case]; see tests/test_hostile_corpus.py

Layout of OUT_DIR: ``image/ audio/ video/ point/`` (one file per case), ``experts/<case>/``
(one expert folder per case), ``mcub/<case>/items.json``, ``outside/`` (what links point
at: outside every folder a loader may read), ``valid/`` (inputs and experts that load, for
"a valid request right after still works"), ``tripwires/`` (marker files that only
unpickling would create; they must never appear).

The experts are the untrained ones of ``composition/factory.py`` on the tiny base of
``composition/factory.py`` (hidden 32), so a studio over ``tiny_base()`` can load the valid ones.
Nothing here is ever unpickled: the pickles are written, never read.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

if __package__ in (None, ""):  # run as a script: make `tests.*` and the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from tests import media_factory as mf

KINDS = ("image", "audio", "video", "point", "expert", "mcub")
MB = 1024 * 1024
SEED = 7


@dataclass(frozen=True)
class Case:
    """One hostile file or folder.

    Attributes:
        name: ``kind/slug``, unique.
        kind: which loader refuses it (one of KINDS).
        category: what is hostile about it (``wrong-content``, ``truncated``, ``pickle``, ``huge-header``,
            ``oversize``, ``symlink``, ``special-file``, ``path-traversal``, ``wrong-type``, ``wrong-shape``, ...).
        expect: text the refusal message must contain.
        path: the file or folder to hand to the loader (for ``expert`` cases: the folder a user would type).
        tripwire: a marker file that exists only if something unpickled the case's payload.
        hidden: server-side strings (link targets) the message must not show.
    """

    name: str
    kind: str
    category: str
    expect: str
    path: Path
    tripwire: Path | None = None
    hidden: tuple[str, ...] = ()


@dataclass(frozen=True)
class Spec:
    """How to write one case: ``write(ctx, path)`` creates ``path`` (and may return a tripwire)."""

    kind: str
    slug: str
    category: str
    expect: str
    filename: str  # for modality cases the file name (its extension matters); else ""
    write: Callable
    hidden: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.slug}"


# --- the writing context ----------------------------------------------------------------------
@dataclass
class Ctx:
    root: Path

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    @property
    def valid(self) -> Path:
        return self.root / "valid"

    def tripwire(self, name: str) -> Path:
        return self.root / "tripwires" / f"{name.replace('/', '-')}.unpickled"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _sparse(path: Path, head: bytes, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk space beyond ``head`` (an over-the-cap upload)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def _pickle_bytes(marker: Path) -> bytes:
    import pickle  # writing only: this module never loads a pickle

    return pickle.dumps(mf.Tripwire(str(marker)), protocol=4)


def _link(path: Path, target: Path | str) -> Path:
    os.symlink(target, path)
    return path


def _loop(path: Path) -> Path:
    """``path`` -> ``path.loop`` -> ``path``: a symbolic-link loop."""
    other = path.with_name(path.name + ".loop")
    os.symlink(other.name, path)
    os.symlink(path.name, other)
    return path


def _random_bytes(n: int, seed: int = SEED) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _wav_bytes(channels: int, rate: int, bits: int, data: bytes, data_size: int | None = None) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    size = len(data) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _npy_header(shape: tuple, version: int = 1, header_len: int | None = None) -> bytes:
    text = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}".encode()
    text += b" " * (63 - (len(text) + 10) % 64) + b"\n"
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text) if header_len is None else header_len) + text
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(text) if header_len is None else header_len) + text


def _gltf_document(uri: str) -> dict:
    """One triangle whose vertex buffer is the external file ``uri``."""
    return {"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
            "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
            "buffers": [{"byteLength": 36, "uri": uri}],
            "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 36}],
            "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3",
                           "min": [0, 0, 0], "max": [1, 1, 0]}]}


def _glb(document: dict) -> bytes:
    text = json.dumps(document).encode()
    text += b" " * (-len(text) % 4)
    chunk = struct.pack("<II", len(text), 0x4E4F534A) + text
    return b"glTF" + struct.pack("<II", 2, 12 + len(chunk)) + chunk


def _small_png() -> bytes:
    from PIL import Image
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- modality cases ---------------------------------------------------------------------------
def _truncated_jpeg(ctx: Ctx, path: Path) -> None:
    full = mf.exif_rotated_jpeg(ctx.outside / "full.jpg", 64, 48, orientation=1)
    mf.truncated(full, path, keep=100)


def _truncated_wav(ctx: Ctx, path: Path) -> None:
    mf.truncated(mf.sine_wav(ctx.outside / "full.wav", 1.0), path, keep=100)


def _nan_wav(ctx: Ctx, path: Path) -> None:
    import soundfile as sf

    data = np.full(1600, 0.5, dtype=np.float32)
    data[10] = np.nan
    sf.write(path, data, 16_000, subtype="FLOAT")


def _truncated_mp4(ctx: Ctx, path: Path) -> None:
    if shutil.which("ffmpeg"):
        mf.truncated(mf.ffmpeg_video(ctx.outside / "full.mp4", seconds=1.0, size="64x48", fps=8), path, keep=300)
    else:  # the same refusal without ffmpeg: a real-looking ftyp box, then the file ends
        _write(path, struct.pack(">I", 24) + b"ftypisom" + b"\x00\x00\x02\x00isomiso2" + b"\x00\x00\x00\x08moov")


def _pickled_npy(ctx: Ctx, path: Path) -> Path:
    mf._pickled_npy(path)
    return Path(str(path) + ".unpickled")  # where media_factory's tripwire would land


def _raw_pickle(ctx: Ctx, path: Path, name: str) -> Path:
    marker = ctx.tripwire(name)
    _write(path, _pickle_bytes(marker))
    return marker


def _npy(array) -> Callable:
    return lambda ctx, path: np.save(path, array)


def _ply_binary_huge(ctx: Ctx, path: Path) -> None:
    _write(path, b"ply\nformat binary_little_endian 1.0\nelement vertex 1000000000\nproperty float x\n"
                 b"property float y\nproperty float z\nend_header\n" + b"\x00" * 36)


def _pcd_huge(ctx: Ctx, path: Path) -> None:
    _write(path, b"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 900000000\n"
                 b"HEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 900000000\nDATA ascii\n0 0 0\n1 1 1\n")


def _plain(data: bytes) -> Callable:
    return lambda ctx, path: _write(path, data)


def _modality_specs() -> list[Spec]:
    text = b"hello, this is not what the extension says\n"
    html = b"<!DOCTYPE html><html><body>not an image</body></html>\n"
    zero_wav = lambda ctx, path: mf.sine_wav(path, 0.0)  # noqa: E731  (a header, no samples)
    specs = [
        # image
        Spec("image", "text-as-png", "wrong-content", "it looks like a text file", "notes.png", _plain(text)),
        Spec("image", "html-as-jpg", "wrong-content", "it looks like an HTML page", "page.jpg", _plain(html)),
        Spec("image", "zip-as-png", "wrong-content", "it looks like a ZIP archive", "archive.png",
             _plain(b"PK\x03\x04" + _random_bytes(200))),
        Spec("image", "truncated-jpeg", "truncated", "truncated, corrupt", "cut.jpg", _truncated_jpeg),
        Spec("image", "decompression-bomb", "huge-header", "refused without decoding", "bomb.png",
             lambda ctx, path: mf.forged_png(path, 100_000, 100_000)),
        Spec("image", "too-many-pixels", "huge-header", "megapixels", "big.png",
             lambda ctx, path: mf.forged_png(path, 8000, 8000)),
        Spec("image", "empty", "empty", "empty (0 bytes)", "empty.png", _plain(b"")),
        Spec("image", "pickle-as-png", "pickle", "it looks like a Python pickle", "photo.png",
             lambda ctx, path: _raw_pickle(ctx, path, "image/pickle-as-png")),
        Spec("image", "over-size-cap", "oversize", "limited to 20.0 MB", "huge.jpg",
             lambda ctx, path: _sparse(path, b"\xff\xd8\xff\xe0", 21 * MB)),
        Spec("image", "svg-extension", "wrong-extension", "not an accepted image format", "vector.svg",
             _plain(b"<svg xmlns='http://www.w3.org/2000/svg'/>")),
        Spec("image", "link-to-folder", "symlink", "is a directory", "folder.png",
             lambda ctx, path: _link(path, ctx.outside)),
        Spec("image", "link-dangling", "symlink", "was not found", "gone.png",
             lambda ctx, path: _link(path, ctx.outside / "no-such-file.png")),
        Spec("image", "link-to-secret-text", "symlink", "it looks like a text file", "secret.png",
             lambda ctx, path: _link(path, ctx.outside / "secret.txt"), hidden=("secret.txt",)),
        # audio
        Spec("audio", "png-as-wav", "wrong-content", "it looks like a PNG image", "song.wav",
             lambda ctx, path: _write(path, _small_png())),
        Spec("audio", "truncated-wav", "truncated", "ms long", "cut.wav", _truncated_wav),
        Spec("audio", "no-samples", "truncated", "no audio samples", "nothing.wav", zero_wav),
        Spec("audio", "silent", "wrong-content", "is silent", "quiet.wav",
             lambda ctx, path: mf.sine_wav(path, 0.5, amplitude=0.0)),
        Spec("audio", "nan-samples", "wrong-content", "NaN", "nan.wav", _nan_wav),
        Spec("audio", "forged-header", "huge-header", "no audio samples", "forged.wav",
             _plain(_wav_bytes(65535, 4_000_000_000, 16, b"\x00\x01" * 64, data_size=0xFFFFFFF0))),
        Spec("audio", "garbage-mp3", "wrong-content", "could not be decoded as audio", "noise.mp3",
             _plain(b"ID3\x04\x00\x00\x00\x00\x00\x00" + _random_bytes(4000))),
        Spec("audio", "pickle-as-wav", "pickle", "it looks like a Python pickle", "voice.wav",
             lambda ctx, path: _raw_pickle(ctx, path, "audio/pickle-as-wav")),
        Spec("audio", "over-size-cap", "oversize", "limited to 50.0 MB", "long.flac",
             lambda ctx, path: _sparse(path, b"fLaC", 51 * MB)),
        Spec("audio", "link-to-dev-zero", "special-file", "not a regular file", "zero.wav",
             lambda ctx, path: _link(path, "/dev/zero"), hidden=("/dev/zero",)),
        Spec("audio", "fifo", "special-file", "not a regular file", "pipe.wav", lambda ctx, path: os.mkfifo(path)),
        Spec("audio", "no-extension", "wrong-extension", "has no extension", "recording", _plain(b"RIFF")),
        # video
        Spec("video", "truncated-mp4", "truncated", "could not be decoded as a video", "cut.mp4", _truncated_mp4),
        Spec("video", "forged-ftyp", "wrong-content", "could not be decoded as a video", "forged.mp4",
             _plain(struct.pack(">I", 24) + b"ftypisom" + b"\x00\x00\x02\x00isomiso2" + _random_bytes(3000))),
        Spec("video", "empty", "empty", "empty (0 bytes)", "empty.mp4", _plain(b"")),
        Spec("video", "wav-as-mp4", "wrong-content", "it looks like a WAV audio file", "clip.mp4",
             lambda ctx, path: shutil.copy(ctx.valid / "audio.wav", path)),
        Spec("video", "text-as-webm", "wrong-content", "it looks like a text file", "clip.webm", _plain(text)),
        Spec("video", "pickle-as-mkv", "pickle", "it looks like a Python pickle", "movie.mkv",
             lambda ctx, path: _raw_pickle(ctx, path, "video/pickle-as-mkv")),
        Spec("video", "over-size-cap", "oversize", "limited to 200.0 MB", "long.mp4",
             lambda ctx, path: _sparse(path, struct.pack(">I", 24) + b"ftypisom", 201 * MB)),
        Spec("video", "link-to-folder", "symlink", "is a directory", "folder.mov",
             lambda ctx, path: _link(path, ctx.outside)),
        Spec("video", "link-loop", "symlink", "is a link that loops back on itself", "loop.avi", lambda ctx, path: _loop(path)),
        # point
        Spec("point", "pickled-npy", "pickle", "pickled data", "objects.npy", _pickled_npy),
        Spec("point", "raw-pickle-as-npy", "pickle", "it looks like a Python pickle", "cloud.npy",
             lambda ctx, path: _raw_pickle(ctx, path, "point/raw-pickle-as-npy")),
        Spec("point", "npy-four-columns", "wrong-shape", "shape (100, 4)", "four.npy", _npy(np.zeros((100, 4)))),
        Spec("point", "npy-three-dims", "wrong-shape", "shape (10, 10, 3)", "cube.npy", _npy(np.zeros((10, 10, 3)))),
        Spec("point", "npy-strings", "wrong-type", "dtype <U1", "words.npy", _npy(np.array([["a", "b", "c"]] * 50))),
        Spec("point", "npy-nan", "wrong-content", "NaN or infinite", "nan.npy",
             lambda ctx, path: mf._nan_npy(path)),
        Spec("point", "npy-huge-shape-header", "huge-header", "truncated, corrupt", "huge.npy",
             _plain(_npy_header((10**12, 3)) + b"\x00" * 48)),
        Spec("point", "npy-huge-header-length", "huge-header", "truncated, corrupt", "longhdr.npy",
             _plain(_npy_header((100, 3), version=2, header_len=0xFFFFFF00)[:40])),
        Spec("point", "ply-huge-vertex-count", "huge-header", "declares 1,000,000,000 vertex entries", "huge.ply",
             _ply_binary_huge),
        Spec("point", "pcd-huge-point-count", "huge-header", "declares 900,000,000 points", "huge.pcd", _pcd_huge),
        Spec("point", "off-huge-counts", "huge-header", "declares 99,999,999,999 vertices", "huge.off",
             _plain(b"OFF\n99999999999 99999999999 0\n0 0 0\n")),
        Spec("point", "ply-no-end-header", "truncated", "'end_header' missing", "half.ply",
             _plain(b"ply\nformat ascii 1.0\nelement vertex 3\n")),
        Spec("point", "xyz-bad-rows", "wrong-content", "not numbers", "bad.xyz", _plain(b"1 2 3\n4 5 6\n7 eight 9\n")),
        Spec("point", "gltf-parent-uri", "path-traversal", "outside its own folder", "escape.gltf",
             lambda ctx, path: _write(path, json.dumps(_gltf_document("../outside/vertices.bin")).encode()),
             hidden=("outside/",)),
        Spec("point", "gltf-encoded-parent-uri", "path-traversal", "outside its own folder", "encoded.gltf",
             lambda ctx, path: _write(path, json.dumps(_gltf_document("%2e%2e/outside/vertices.bin")).encode())),
        Spec("point", "gltf-file-url", "path-traversal", "outside its own folder", "url.gltf",
             lambda ctx, path: _write(path, json.dumps(_gltf_document("file:///etc/passwd")).encode()),
             hidden=("/etc",)),
        Spec("point", "glb-external-buffer", "path-traversal", "outside its own folder", "escape.glb",
             lambda ctx, path: _write(path, _glb(_gltf_document("../outside/vertices.bin")))),
        Spec("point", "text-as-glb", "wrong-content", "it looks like a text file", "model.glb", _plain(text)),
        Spec("point", "degenerate-mesh", "wrong-shape", "no surface area", "flat.obj",
             _plain(b"v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")),
        Spec("point", "over-size-cap", "oversize", "limited to 100.0 MB", "scan.ply",
             lambda ctx, path: _sparse(path, b"ply\n", 101 * MB)),
        Spec("point", "link-to-secret-text", "symlink", "not numbers", "points.xyz",
             lambda ctx, path: _link(path, ctx.outside / "secret.txt"), hidden=("secret.txt",)),
    ]
    return specs


# --- expert cases -----------------------------------------------------------------------------
def _expert_json(folder: Path) -> dict:
    return json.loads((folder / "expert.json").read_text())


def _set(**changes) -> Callable[[Path], None]:
    """Change fields of expert.json; ``a__b`` reaches into objects (``projector__in_dim=...``)."""
    def mutate(folder: Path) -> None:
        data = _expert_json(folder)
        for key, value in changes.items():
            *parents, last = key.split("__")
            target = data
            for p in parents:
                target = target[p]
            target[last] = value
        (folder / "expert.json").write_text(json.dumps(data))
    return mutate


def _json_text(text: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / "expert.json").write_bytes(text)


def _tensors(relative: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """Load a safetensors file of the expert (safetensors: no pickle), edit the dict, save it back."""
    def mutate(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        path = folder / relative
        tensors = load_file(str(path))
        edit(tensors)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return mutate


def _first(tensors: dict, suffix: str) -> str:
    return sorted(k for k in tensors if k.endswith(suffix))[0]


def _nan_in(suffix: str) -> Callable[[dict], None]:
    def edit(t: dict) -> None:
        key = _first(t, suffix)
        t[key] = t[key].clone()
        t[key].view(-1)[0] = float("nan")
    return edit


def _widen(suffix: str) -> Callable[[dict], None]:
    def edit(t: dict) -> None:
        import torch

        key = _first(t, suffix)
        t[key] = torch.zeros(t[key].shape[0], t[key].shape[1] + 1)
    return edit


def _many_keys(t: dict) -> None:
    import torch

    for i in range(5000):
        t[f"padding.{i:05d}.a.rather.long.tensor.name.to.make.the.header.large"] = torch.zeros(1)


def _bytes_at(relative: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / relative).write_bytes(data)


def _cut(relative: str, keep: int) -> Callable[[Path], None]:
    return lambda folder: (folder / relative).write_bytes((folder / relative).read_bytes()[:keep])


def _adapter_config(**changes) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = folder / "text" / "adapter_config.json"
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data))
    return mutate


def _safetensors_header(header: bytes, length: int | None = None, body: bytes = b"\x00" * 8) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + body


def _replace_with_link(relative: str, target: Callable[[Ctx], Path | str]) -> Callable:
    def mutate(folder: Path, ctx: Ctx) -> None:
        path = folder / relative
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        _link(path, target(ctx))
    return mutate


def _loop_at(relative: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        (folder / relative).unlink()
        _loop(folder / relative)
    return mutate


def _pickle_bin(ctx: Ctx, folder: Path, name: str) -> Path:
    """peft's old format: adapter_model.bin (a torch pickle) instead of safetensors."""
    import torch

    marker = ctx.tripwire(name)
    (folder / "modality" / "adapter_model.safetensors").unlink()
    torch.save({"weights": mf.Tripwire(str(marker))}, folder / "modality" / "adapter_model.bin")
    return marker


def _torch_save_as_safetensors(ctx: Ctx, folder: Path, name: str) -> Path:
    """A torch.save checkpoint (a zip with a pickle inside) under the safetensors name."""
    import torch

    marker = ctx.tripwire(name)
    torch.save({"weights": mf.Tripwire(str(marker))}, folder / "text" / "adapter_model.safetensors")
    return marker


def _pickle_as_safetensors(ctx: Ctx, folder: Path, name: str) -> Path:
    marker = ctx.tripwire(name)
    (folder / "projector.safetensors").write_bytes(_pickle_bytes(marker))
    return marker


def _huge_json(folder: Path) -> None:
    _sparse(folder / "expert.json", b'{"name": "', 2 * MB)


def _fifo_json(folder: Path) -> None:
    (folder / "expert.json").unlink()
    os.mkfifo(folder / "expert.json")


def _expert_specs() -> list[Spec]:
    """(slug, category, expect, mutation) on a copy of the valid image expert (renamed to its slug).

    A mutation takes ``(folder)``, or ``(folder, ctx)`` / ``(ctx, folder, name)`` when it needs the corpus.
    """
    st = _safetensors_header
    table = [
        # expert.json: not JSON, wrong types, hostile values
        ("json-not-json", "wrong-type", "expert.json is not valid JSON", _json_text(b"{not json")),
        ("json-a-list", "wrong-type", "must hold a JSON object, found list", _json_text(b"[1, 2, 3]")),
        ("json-deep-nesting", "huge-header", "nested too deeply", _json_text(b"[" * 100_000 + b"]" * 100_000)),
        ("json-4300-digit-number", "huge-header", "is not valid JSON", _json_text(b'{"name": ' + b"9" * 5000 + b"}")),
        ("json-not-utf8", "wrong-type", "is not valid JSON", _json_text(b'{"name": "\xff\xfe"}')),
        ("json-huge-file", "huge-header", "at most 1,048,576 bytes", _huge_json),
        ("json-is-a-fifo", "special-file", "holds no expert.json", _fifo_json),
        ("type-prefix-tokens-string", "wrong-type", "prefix_tokens='2'", _set(prefix_tokens="2")),
        ("type-encoder-string", "wrong-type", "malformed expert.json", _set(encoder="efficientnet-lite0")),
        ("type-in-dim-float", "wrong-type", "in_dim=1280.5", _set(projector__in_dim=1280.5)),
        ("type-base-model-string", "wrong-type", "malformed expert.json", _set(base_model="tiny-llama")),
        ("type-sha256-number", "wrong-type", "sha256=12345", _set(base_model__sha256=12345)),
        ("type-name-list", "wrong-type", "expert name ['image']", _set(name=["image"])),
        ("type-modality-object", "wrong-type", "is unknown; expected one of", _set(modality={"image": True})),
        ("type-format-version-string", "wrong-type", "format_version '1' is not supported", _set(format_version="1")),
        ("type-feature-dim-bool", "wrong-type", "feature_dim=True", _set(encoder__feature_dim=True)),
        ("type-encoder-source-number", "wrong-type", "encoder source 5", _set(encoder__source=5)),
        ("type-unknown-field", "wrong-type", "unexpected keyword argument 'trust_remote_code'",
         _set(trust_remote_code=True)),
        ("type-description-object", "wrong-type", "description={'html'", _set(description={"html": "<script>"})),
        ("name-path-traversal", "path-traversal", "without '/'", _set(name="../../../etc/passwd")),
        ("name-backslash-traversal", "path-traversal", "without '/'", _set(name="..\\..\\windows")),
        ("name-control-characters", "wrong-type", "printable characters", _set(name="evil\x1b[31m\x00")),
        ("name-too-long", "huge-header", "at most 100 printable characters", _set(name="x" * 5000)),
        ("another-base", "wrong-shape", "differs from the base model's hidden size", _set(projector__out_dim=64)),
        # projector.safetensors
        ("projector-truncated", "truncated", "projector.safetensors is not a readable safetensors file",
         _cut("projector.safetensors", 100)),
        ("projector-random-bytes", "wrong-content", "not a readable safetensors file",
         _bytes_at("projector.safetensors", _random_bytes(4096))),
        ("projector-huge-header-length", "huge-header", "header too large",
         _bytes_at("projector.safetensors", st(b"{}", length=2**62))),
        ("projector-header-beyond-file", "huge-header", "not a readable safetensors file",
         _bytes_at("projector.safetensors", st(json.dumps({"projector.0.weight": {
             "dtype": "F32", "shape": [1_000_000_000, 1000], "data_offsets": [0, 4_000_000_000_000]}}).encode()))),
        ("projector-header-wrong-types", "wrong-type", "not a readable safetensors file",
         _bytes_at("projector.safetensors", st(json.dumps({"prefix": {
             "dtype": "EVIL", "shape": "2", "data_offsets": [0, 8]}}).encode()))),
        ("projector-header-not-json", "wrong-type", "not a readable safetensors file",
         _bytes_at("projector.safetensors", st(b"{not json at all"))),
        ("projector-is-a-pickle", "pickle", "is a Python pickle, not a safetensors file", _pickle_as_safetensors),
        ("projector-wrong-shape", "wrong-shape", "has shape (32, 1281), expected (32, 1280)",
         _tensors("projector.safetensors", _widen("projector.0.weight"))),
        ("projector-missing-key", "wrong-shape", "missing ['prefix']",
         _tensors("projector.safetensors", lambda t: t.pop("prefix"))),
        ("projector-5000-extra-keys", "huge-header", "and 4995 more", _tensors("projector.safetensors", _many_keys)),
        ("projector-nan", "wrong-content", "NaN or infinite", _tensors("projector.safetensors", _nan_in("0.weight"))),
        # adapters (peft format)
        ("adapter-wrong-shape", "wrong-shape", "but the base layer is",
         _tensors("text/adapter_model.safetensors", _widen("lora_A.weight"))),
        ("adapter-rank-mismatch", "wrong-shape", "expected A (r=8, in)", _adapter_config(r=8)),
        ("adapter-alpha-string", "wrong-type", "lora_alpha='16'", _adapter_config(lora_alpha="16")),
        ("adapter-alpha-infinite", "wrong-type", "expected a positive finite number", _adapter_config(lora_alpha=float("inf"))),
        ("adapter-dora", "wrong-type", "use_dora=true is not supported", _adapter_config(use_dora=True)),
        ("adapter-unexpected-key", "wrong-shape", "unexpected key",
         _tensors("text/adapter_model.safetensors", lambda t: t.update(evil=t[_first(t, "lora_A.weight")].clone()))),
        ("adapter-nan", "wrong-content", "NaN or infinite",
         _tensors("text/adapter_model.safetensors", _nan_in("lora_B.weight"))),
        ("adapter-truncated", "truncated", "adapter_model.safetensors is not a readable safetensors file",
         _cut("text/adapter_model.safetensors", 64)),
        ("adapter-torch-save-as-safetensors", "pickle", "is a PyTorch torch.save archive", _torch_save_as_safetensors),
        ("adapter-pickle-bin", "pickle", "only adapter_model.bin is there, a pickled PyTorch file", _pickle_bin),
        ("adapter-folder-missing", "wrong-shape", "adapter_config.json is missing",
         lambda folder: shutil.rmtree(folder / "modality")),
        ("adapter-extra-folder", "wrong-shape", "unexpected adapter folder(s) ['evil']",
         lambda folder: (folder / "evil").mkdir()),
        # links out of the expert folder
        ("link-projector-outside", "symlink", "projector.safetensors is a link to a file outside the expert folder",
         _replace_with_link("projector.safetensors", lambda ctx: ctx.outside / "expert-parts" / "projector.safetensors")),
        ("link-adapter-folder-outside", "symlink", "text/adapter_config.json is a link to a file outside",
         _replace_with_link("text", lambda ctx: ctx.outside / "expert-parts" / "text")),
        ("link-expert-json-outside", "symlink", "expert.json is a link to a file outside",
         _replace_with_link("expert.json", lambda ctx: ctx.outside / "expert-parts" / "expert.json")),
        ("link-expert-json-etc-passwd", "symlink", "expert.json is a link to a file outside",
         _replace_with_link("expert.json", lambda ctx: "/etc/passwd")),
        ("link-projector-dev-zero", "special-file", "is a link to a file outside",
         _replace_with_link("projector.safetensors", lambda ctx: "/dev/zero")),
        ("link-loop", "symlink", "is a link that loops back on itself", _loop_at("projector.safetensors")),
    ]
    link_targets = ("/dev/zero", "/etc/passwd", "expert-parts")  # server-side: the user never typed these
    specs = [Spec("expert", slug, category, expect, "", mutation, hidden=link_targets if slug.startswith("link-") else ())
             for slug, category, expect, mutation in table]
    # Paths a user types in the "Add an expert" box.
    specs += [
        Spec("expert", "typed-path-traversal", "path-traversal", "holds no expert.json", "",
             lambda ctx, path: None, hidden=("/etc",)),
        Spec("expert", "typed-missing-folder", "path-traversal", "does not exist", "", lambda ctx, path: None),
        Spec("expert", "typed-empty-path", "wrong-type", "type the path of an expert folder", "", lambda ctx, path: None),
    ]
    return specs


def _typed_path(ctx: Ctx, slug: str) -> Path | str:
    if slug == "typed-path-traversal":
        return str(ctx.root / "experts" / ("../" * 40) / "etc")
    if slug == "typed-missing-folder":
        return str(ctx.root / "experts" / "no-such-expert" / ".." / ".." / "nowhere")
    return "   "


# --- MCUB cases -------------------------------------------------------------------------------
def _mcub_item(inputs: dict, conversations=None) -> dict:
    return {"id": "1", "conversations": conversations if conversations is not None else [
        {"from": "human", "value": "What do these have in common?\nA. ball\nB. cube\nC. cone\nD. ring"},
        {"from": "gpt", "value": "A"}], "modal_inputs": inputs}


def _mcub_specs() -> list[Spec]:
    def items(*entries) -> Callable:
        return lambda ctx, folder: (folder / "items.json").write_text(json.dumps(list(entries)))

    def raw(data: bytes) -> Callable:
        return lambda ctx, folder: (folder / "items.json").write_bytes(data)

    def with_media(link_target: Callable[[Ctx], Path] | None = None, loop: bool = False) -> Callable:
        def write(ctx: Ctx, folder: Path) -> None:
            (folder / "media").mkdir()
            shutil.copy(ctx.valid / "audio.wav", folder / "media" / "audio.wav")
            if loop:
                _loop(folder / "media" / "image.png")
            else:
                _link(folder / "media" / "image.png", link_target(ctx))
            (folder / "items.json").write_text(json.dumps([_mcub_item({"image": "media/image.png",
                                                                        "audio": "media/audio.wav"})]))
        return write

    good = {"audio": "audio.wav"}
    table = [
        ("not-json", "wrong-type", "is not valid JSON", raw(b"[{oops")),
        ("deep-nesting", "huge-header", "nested too deeply", raw(b"[" * 100_000 + b"]" * 100_000)),
        ("4300-digit-id", "huge-header", "is not valid JSON", raw(b'[{"id": ' + b"7" * 5000 + b"}]")),
        ("object-not-list", "wrong-type", "must hold a non-empty JSON list", raw(b'{"items": []}')),
        ("absolute-path", "path-traversal", "is absolute", items(_mcub_item({"image": "/etc/passwd"}))),
        ("windows-absolute-path", "path-traversal", "is absolute", items(_mcub_item({"image": "C:\\Windows\\win.ini"}))),
        ("dotdot-path", "path-traversal", "leaves the JSON file's folder",
         items(_mcub_item({"image": "../../outside/real.png"}))),
        ("link-out-of-folder", "symlink", "points outside the JSON file's folder",
         with_media(lambda ctx: ctx.outside / "real.png")),
        ("link-loop", "symlink", "loops back on itself", with_media(loop=True)),
        ("conversations-a-string", "wrong-type", "'conversations' must be a non-empty list",
         items(_mcub_item(good, conversations="What is it? A"))),
        ("unknown-modality", "wrong-type", "unknown modal_inputs key 'smell'", items(_mcub_item({"smell": "x.wav"}))),
        ("input-path-a-number", "wrong-type", "must be a relative path", items(_mcub_item({"image": 42}))),
    ]
    return [Spec("mcub", slug, category, expect, "", write, hidden=("real.png",) if slug.startswith("link-") else ())
            for slug, category, expect, write in table]


def case_specs() -> list[Spec]:
    """Every case, without writing anything (cheap: tests parametrize over these names)."""
    specs = _modality_specs() + _expert_specs() + _mcub_specs()
    names = [s.name for s in specs]
    assert len(names) == len(set(names)), "case names must be unique"
    return specs


# --- valid references and the writer ----------------------------------------------------------
def tiny_base_for_experts():
    """The tiny base of composition/factory.py with the fields save_random_experts reads (hidden_size)."""
    from composition.random_models import HIDDEN, tiny_base

    base = tiny_base()
    return SimpleNamespace(model=base.model, name=base.name, sha256=base.sha256, hidden_size=HIDDEN)


def valid_inputs(root: Path) -> dict[str, Path]:
    """One file per modality that loads (video only when ffmpeg could make one)."""
    found = {m: root / "valid" / f"{m}{ext}" for m, ext in
             (("image", ".png"), ("audio", ".wav"), ("video", ".mp4"), ("point", ".npy"))}
    return {m: p for m, p in found.items() if p.is_file()}


def valid_experts(root: Path) -> Path:
    """The folder of the four valid experts (image, audio, video, point)."""
    return root / "valid" / "experts"


def valid_mcub(root: Path) -> Path:
    """An MCUB file (one item: image, audio, point) whose paths stay inside its folder."""
    return root / "valid" / "mcub" / "items.json"


def _write_valid(ctx: Ctx) -> None:
    from PIL import Image

    from composition.random_models import save_random_experts

    ctx.valid.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(ctx.valid / "image.png")
    mf.sine_wav(ctx.valid / "audio.wav", 0.5)
    points = np.concatenate([rng.normal(size=(300, 3)), rng.uniform(size=(300, 3))], axis=1)
    np.save(ctx.valid / "point.npy", points)
    if shutil.which("ffmpeg"):
        mf.ffmpeg_video(ctx.valid / "video.mp4", seconds=1.0, size="64x48", fps=8)
    save_random_experts(tiny_base_for_experts(), valid_experts(ctx.root), ("image", "audio", "video", "point"), seed=SEED)
    mcub = valid_mcub(ctx.root)
    (mcub.parent / "files").mkdir(parents=True)
    inputs = {}
    for modality in ("image", "audio", "point"):
        source = valid_inputs(ctx.root)[modality]
        shutil.copy(source, mcub.parent / "files" / source.name)
        inputs[modality] = f"files/{source.name}"
    mcub.write_text(json.dumps([_mcub_item(inputs)], indent=1))


def _write_outside(ctx: Ctx) -> None:
    """What hostile links point at: a secret, a real image, an expert's parts, a vertex buffer."""
    out = ctx.outside
    out.mkdir(parents=True)
    (out / "secret.txt").write_text("server-side secret: never shown, never read as an input\n")
    shutil.copy(ctx.valid / "image.png", out / "real.png")
    (out / "vertices.bin").write_bytes(struct.pack("<9f", 0, 0, 0, 1, 0, 0, 0, 1, 0))
    parts = out / "expert-parts"
    shutil.copytree(valid_experts(ctx.root) / "image", parts)
    _set(name="outside-expert")(parts)


def build_corpus(out_dir: str | os.PathLike) -> list[Case]:
    """Write every case (and the valid references) under ``out_dir`` (must be empty or absent)."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; the corpus is written into a fresh folder")
    ctx = Ctx(root)
    for folder in ("tripwires", *KINDS[:4], "experts", "mcub"):
        (root / folder).mkdir()
    _write_valid(ctx)
    _write_outside(ctx)
    cases = []
    for spec in case_specs():
        cases.append(_write_case(ctx, spec))
    return cases


def _write_case(ctx: Ctx, spec: Spec) -> Case:
    tripwire = None
    if spec.kind in ("image", "audio", "video", "point"):
        path = ctx.root / spec.kind / spec.filename
        result = spec.write(ctx, path)
        tripwire = result if isinstance(result, Path) and result.suffix == ".unpickled" else None
    elif spec.kind == "mcub":
        folder = ctx.root / "mcub" / spec.slug
        folder.mkdir()
        spec.write(ctx, folder)
        path = folder / "items.json"
    elif spec.slug.startswith("typed-"):
        path = Path(_typed_path(ctx, spec.slug))
    else:
        path = ctx.root / "experts" / spec.slug
        shutil.copytree(valid_experts(ctx.root) / "image", path)
        _set(name=f"hostile-{spec.slug}")(path)
        tripwire = _mutate(ctx, spec, path)
    return Case(spec.name, spec.kind, spec.category, spec.expect, path, tripwire, spec.hidden)


def _mutate(ctx: Ctx, spec: Spec, folder: Path) -> Path | None:
    import inspect

    arity = len(inspect.signature(spec.write).parameters)
    if arity == 1:
        spec.write(folder)
    elif arity == 2:
        spec.write(folder, ctx)
    else:
        return spec.write(ctx, folder, spec.name)
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/hostile_corpus.py OUT_DIR", file=sys.stderr)
        return 2
    cases = build_corpus(argv[0])
    for case in cases:
        print(f"{case.kind:7s} {case.category:15s} {case.name:45s} -> {case.expect}")
    counts = {k: sum(c.kind == k for c in cases) for k in KINDS}
    print(f"{len(cases)} cases: " + ", ".join(f"{k} {n}" for k, n in counts.items() if n))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
