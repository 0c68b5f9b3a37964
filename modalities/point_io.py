"""Readers for point-cloud and mesh files: each returns raw xyz, optional rgb in [0, 1] and facts.

- `.npy` (the original MCUB format): N×3 or N×6 (xyz + rgb in 0..1 or 0..255), read with
  `np.load(..., allow_pickle=False)` via a memory map so shape and dtype are checked before
  any data is read and pickled objects are never unpickled.
- `.xyz`, `.pts`, `.txt`: whitespace-separated text parsed here with numpy (open3d's text
  readers skip malformed lines silently; we refuse them with a message instead).
- `.ply`, `.pcd`: open3d point clouds; a `.ply` with faces is a mesh.
- `.obj`, `.stl`, `.off`, `.glb`, `.gltf` (and `.ply` with faces): open3d meshes, whose
  surface is sampled here with a seeded numpy generator (by area, see point_sampling).

Before open3d reads a file, the counts its header declares are checked against the file
size (open3d allocates what the header says: a 200-byte PLY claiming 10^9 vertices would
take gigabytes), and a glTF may not refer to files outside its own folder (its buffers
and images are read, and their bytes would become points and colours).

A reader raises `ModalityError` for problems it can name and lets other exceptions go
(the base class turns them into "could not be decoded").
"""
from __future__ import annotations

import json
import re
import struct
from urllib.parse import unquote
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .base import ModalityError
from .point_sampling import UVTexture, sample_mesh_surface

CLOUD_EXTENSIONS = (".ply", ".pcd", ".xyz", ".pts", ".txt", ".npy")
MESH_EXTENSIONS = (".obj", ".stl", ".off", ".glb", ".gltf")


@dataclass
class RawCloud:
    """Unnormalised points: xyz (N, 3) float64, rgb (N, 3) in [0, 1] or None, and facts for meta."""

    xyz: np.ndarray
    rgb: np.ndarray | None
    facts: dict[str, Any] = field(default_factory=dict)


def read_cloud(file: Path, mesh_samples: int, seed: int) -> RawCloud:
    """Dispatch on the extension (and, for .ply, on whether the header declares faces)."""
    ext = file.suffix.lower()
    if ext == ".npy":
        return read_npy(file)
    if ext in (".xyz", ".pts", ".txt"):
        return read_text(file)
    check_declared_size(file)
    if ext == ".ply" and ply_face_count(file) > 0:
        return read_mesh(file, mesh_samples, seed)
    if ext in (".ply", ".pcd"):
        return read_o3d_cloud(file)
    if ext in MESH_EXTENSIONS:
        return read_mesh(file, mesh_samples, seed)
    raise ModalityError(f"{file.name}: no point-cloud reader for '{ext}'")  # pragma: no cover - checked before


def check_shape(file: Path, shape: tuple[int, ...]) -> None:
    """Points are rows: N×3 (xyz) or N×6 (xyz + rgb)."""
    if len(shape) != 2 or shape[1] not in (3, 6):
        raise ModalityError(f"{file.name} holds an array of shape {tuple(shape)}; expected N×3 or N×6 "
                            "(xyz, or xyz + rgb). Save the points as a float array of that shape.")


def split_columns(file: Path, table: np.ndarray) -> RawCloud:
    """N×3 -> xyz; N×6 -> xyz + rgb (0..1 or 0..255, detected); anything else refused."""
    check_shape(file, table.shape)
    if not np.all(np.isfinite(table)):
        bad = int((~np.isfinite(table)).any(axis=1).sum())
        raise ModalityError(f"{file.name} has {bad} point(s) with NaN or infinite values; remove them and try again.")
    xyz = table[:, :3].astype(np.float64)
    if table.shape[1] == 3:
        return RawCloud(xyz, None)
    rgb = table[:, 3:6].astype(np.float64)
    low, high = (float(rgb.min()), float(rgb.max())) if len(rgb) else (0.0, 0.0)
    if low < 0 or high > 255:
        raise ModalityError(f"{file.name}: columns 4-6 should be colours in 0..1 or 0..255, but range from "
                            f"{low:g} to {high:g} (normals?). Save xyz only (N×3) or xyz + rgb (N×6).")
    scale = 255.0 if high > 1.0 else 1.0
    return RawCloud(xyz, rgb / scale, {"color_range": "0..255" if scale > 1 else "0..1"})


def read_npy(file: Path) -> RawCloud:
    """A .npy array, never unpickled: the memory map reads the header (shape, dtype) first."""
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower() or "object" in str(err).lower():
            raise ModalityError(f"{file.name} contains Python objects (pickled data), which are never loaded for "
                                "safety. Save a plain float array of shape N×3 or N×6 with np.save.") from None
        raise
    if not isinstance(array, np.ndarray):
        raise ModalityError(f"{file.name} is not a single .npy array; save one N×3 or N×6 float array with np.save.")
    if array.dtype.kind not in "fiu" or array.dtype.fields is not None:
        raise ModalityError(f"{file.name} holds an array of dtype {array.dtype}; expected real numbers (float or int) "
                            "of shape N×3 or N×6.")
    check_shape(file, array.shape)
    return split_columns(file, np.array(array, dtype=np.float64))


_NUMBER_LINE = re.compile(r"^\s*-?\d+\s*$")


def read_text(file: Path) -> RawCloud:
    """Whitespace-separated rows: x y z [r g b]; a first line with a single integer (.pts count) is skipped;
    '#' starts a comment. 4 columns (xyz + intensity) and 7 (xyz + intensity + rgb) are accepted too."""
    with open(file, "r", encoding="utf-8", errors="strict") as f:
        first = f.readline()
    skip = 1 if _NUMBER_LINE.match(first) else 0
    try:
        table = np.loadtxt(file, comments="#", skiprows=skip, ndmin=2, dtype=np.float64)
    except ValueError:
        raise ModalityError(f"{file.name} has rows that are not numbers or differ in their number of columns; "
                            "expected one point per line: 'x y z' or 'x y z r g b'.") from None
    if table.ndim == 2 and table.shape[1] == 4:
        table = table[:, :3]
    elif table.ndim == 2 and table.shape[1] == 7:
        table = np.concatenate([table[:, :3], table[:, 4:]], axis=1)
    return split_columns(file, table)


def ply_face_count(file: Path) -> int:
    """The number of faces declared in a PLY header (0 for a pure point cloud)."""
    with open(file, "rb") as f:
        header = f.read(64 * 1024)
    end = header.find(b"end_header")
    if end < 0:
        raise ModalityError(f"{file.name} has no complete PLY header ('end_header' missing); it is truncated or corrupt.")
    match = re.search(rb"^element\s+face\s+(\d+)", header[:end], flags=re.MULTILINE)
    return int(match.group(1)) if match else 0


def _quiet_o3d():
    import open3d as o3d

    return o3d, o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error)


def read_o3d_cloud(file: Path) -> RawCloud:
    o3d, quiet = _quiet_o3d()
    with quiet:
        cloud = o3d.io.read_point_cloud(str(file), format="auto", remove_nan_points=False, remove_infinite_points=False)
    xyz = np.asarray(cloud.points, dtype=np.float64)
    if xyz.shape[0] == 0:
        raise ModalityError(f"{file.name} contains no points (or could not be read as a point cloud); "
                            "check that it is a valid .ply/.pcd file.")
    table = np.concatenate([xyz, np.asarray(cloud.colors, dtype=np.float64)], axis=1) if cloud.has_colors() else xyz
    return split_columns(file, table)


def read_mesh(file: Path, samples: int, seed: int) -> RawCloud:
    """Read a triangle mesh with open3d and sample its surface (seeded, by area)."""
    textured = file.suffix.lower() in (".glb", ".gltf")  # UV convention verified for glTF only
    if textured:
        check_gltf_references(file)  # before open3d is even imported: a refusal stays cheap
    o3d, quiet = _quiet_o3d()
    with quiet:
        mesh = o3d.io.read_triangle_mesh(str(file), enable_post_processing=textured)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    triangles = np.asarray(mesh.triangles, dtype=np.int64)
    if vertices.shape[0] == 0 or triangles.shape[0] == 0:
        raise ModalityError(f"{file.name} contains no triangles (or could not be read as a mesh); "
                            "check that it is a valid 3-D model file.")
    if not np.all(np.isfinite(vertices)):
        raise ModalityError(f"{file.name} has vertices with NaN or infinite coordinates; repair the mesh and try again.")
    if triangles.min() < 0 or triangles.max() >= vertices.shape[0]:
        raise ModalityError(f"{file.name} has faces that point at missing vertices; it is corrupt.")
    vertex_colors = np.asarray(mesh.vertex_colors, dtype=np.float64) if mesh.has_vertex_colors() else None
    texture = None
    if vertex_colors is None and textured and mesh.has_triangle_uvs() and len(mesh.textures) > 0:
        image = np.asarray(mesh.textures[0])
        if image.size:
            texture = UVTexture(image, np.asarray(mesh.triangle_uvs, dtype=np.float64))
    try:
        xyz, rgb = sample_mesh_surface(vertices, triangles, samples, seed, vertex_colors, texture)
    except ValueError:
        raise ModalityError(f"{file.name} is a mesh with no surface area (all faces are degenerate).") from None
    facts = {"source": "mesh", "vertices": int(vertices.shape[0]), "triangles": int(triangles.shape[0]),
             "color_source": "vertex colours" if vertex_colors is not None else ("texture" if texture else "none")}
    rgb = np.clip(rgb, 0.0, 1.0) if rgb is not None else None
    return RawCloud(xyz, rgb, facts)


# --- header checks before open3d ----------------------------------------------------------
_PLY_SIZES = {"char": 1, "int8": 1, "uchar": 1, "uint8": 1, "short": 2, "int16": 2, "ushort": 2, "uint16": 2,
              "int": 4, "int32": 4, "uint": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}
# LZF (PCD binary_compressed) shrinks data at most ~90x; a header claiming more than this is not real.
_MAX_COMPRESSION = 100


def check_declared_size(file: Path) -> None:
    """Refuse a PLY, PCD or OFF whose header declares more data than the file can hold."""
    ext = file.suffix.lower()
    head = _head(file)
    size = file.stat().st_size
    if ext == ".ply":
        needed, what = _ply_needs(file, head)
    elif ext == ".pcd":
        needed, what = _pcd_needs(head)
    elif ext == ".off":
        needed, what = _off_needs(head)
    else:
        return
    if needed > size:
        raise ModalityError(f"{file.name} declares {what} but is only {size:,} bytes; it is truncated or corrupt "
                            "(re-export it and upload it again).")


def _head(file: Path, n: int = 64 * 1024) -> bytes:
    with open(file, "rb") as f:
        return f.read(n)


def _count(file: Path, text: str) -> int:
    if not re.fullmatch(r"\d{1,30}", text):
        raise ModalityError(f"{file.name} declares the count {text[:20]!r} in its header; expected a whole number. "
                            "It is corrupt; re-export it.")
    return int(text)


def _ply_needs(file: Path, head: bytes) -> tuple[int, str]:
    """(smallest possible file size for the declared elements, words for them)."""
    end = head.find(b"end_header")
    if end < 0:
        raise ModalityError(f"{file.name} has no complete PLY header ('end_header' missing); it is truncated or corrupt.")
    lines = head[:end].decode("ascii", errors="replace").splitlines()
    ascii_body = any(line.split()[:2] == ["format", "ascii"] for line in lines if line.strip())
    elements: list[list] = []  # [name, count, smallest row bytes]
    for line in lines:
        words = line.split()
        if len(words) >= 3 and words[0] == "element":
            elements.append([words[1], _count(file, words[2]), 0])
        elif len(words) >= 3 and words[0] == "property" and elements:
            if ascii_body:
                elements[-1][2] += 2  # at least one digit and a separator
            elif words[1] == "list":  # a count (the list may be empty)
                elements[-1][2] += _PLY_SIZES.get(words[2], 1)
            else:
                elements[-1][2] += _PLY_SIZES.get(words[1], 1)
    needed = end + len(b"end_header") + sum(count * row for _, count, row in elements)
    described = ", ".join(f"{count:,} {name} entries" for name, count, _ in elements) or "no elements"
    return needed, described


def _pcd_needs(head: bytes) -> tuple[int, str]:
    fields: dict[str, list[str]] = {}
    body_at = None
    for match in re.finditer(rb"^([A-Za-z_]+)[ \t]*([^\r\n]*)\r?\n", head, flags=re.MULTILINE):
        key, value = match.group(1).decode().upper(), match.group(2).decode("ascii", errors="replace").split()
        fields[key] = value
        if key == "DATA":
            body_at = match.end()
            break
    if body_at is None:
        return 0, "an incomplete header"  # open3d refuses it with its own error
    try:
        sizes = [int(v) for v in fields.get("SIZE", [])]
        counts = [int(v) for v in fields.get("COUNT", [])] or [1] * len(sizes)
        width, height = (int((fields.get(k) or ["0"])[0]) for k in ("WIDTH", "HEIGHT"))
        points = int((fields.get("POINTS") or [str(width * height)])[0])
    except ValueError:
        return 0, "a malformed header"
    data = (fields.get("DATA") or ["ascii"])[0].lower()
    if data == "binary":
        row = sum(s * c for s, c in zip(sizes, counts))
    elif data == "binary_compressed":
        row = sum(s * c for s, c in zip(sizes, counts)) / _MAX_COMPRESSION
    else:
        row = 2 * sum(counts)  # ascii: a digit and a separator per value at least
    return body_at + int(points * row), f"{points:,} points"


def _off_needs(head: bytes) -> tuple[int, str]:
    words = []
    for line in head.decode("ascii", errors="replace").splitlines()[:50]:
        words += line.split("#", 1)[0].split()
        if len(words) >= 3:
            break
    if not words or not words[0].upper().endswith("OFF") or len(words) < 3 or "BINARY" in (w.upper() for w in words[:2]):
        return 0, "an unusual header"  # left to open3d
    try:
        vertices, faces = int(words[1]), int(words[2])
    except ValueError:
        return 0, "a malformed header"
    # ascii: 'x y z' per vertex, 'n a b c' per face, each value a digit and a separator at least
    return vertices * 6 + faces * 8, f"{vertices:,} vertices and {faces:,} faces"


def check_gltf_references(file: Path) -> None:
    """Refuse a .gltf/.glb whose buffers or images name a file outside the file's own folder."""
    document = _gltf_json(file)
    if not isinstance(document, dict):
        raise ModalityError(f"{file.name} is not valid glTF: its JSON part cannot be read. Re-export it as .glb.")
    folder = file.parent.resolve()
    for group in ("buffers", "images"):
        entries = document.get(group)
        for entry in entries if isinstance(entries, list) else []:
            uri = entry.get("uri") if isinstance(entry, dict) else None
            if not isinstance(uri, str) or uri.startswith("data:"):
                continue
            plain = unquote(uri).replace("\\", "/")
            outside = (re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", plain) is not None or plain.startswith("/")
                       or ".." in plain.split("/"))
            if not outside:
                try:
                    outside = not (folder / plain).resolve().is_relative_to(folder)
                except (OSError, RuntimeError):
                    outside = True
            if outside:
                shown = plain.rstrip("/").rsplit("/", 1)[-1][:60] or "?"  # the name only: never a directory
                raise ModalityError(f"{file.name} refers to a file ({shown!r}) outside its own folder; 3-D files are "
                                    "read only with what sits next to them. Export a self-contained .glb and upload it again.")


def _gltf_json(file: Path):
    """The JSON document of a .gltf, or the JSON chunk of a .glb; None when it cannot be read."""
    try:
        if file.suffix.lower() == ".gltf":
            return json.loads(file.read_bytes())
        with open(file, "rb") as f:
            header = f.read(20)
            if len(header) < 20 or header[:4] != b"glTF":
                return None
            length, kind = struct.unpack("<II", header[12:20])
            if kind != 0x4E4F534A:  # "JSON"
                return None
            return json.loads(f.read(min(length, file.stat().st_size)))
    except (ValueError, RecursionError, OSError):
        return None
