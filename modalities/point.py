"""Point clouds and meshes -> float32 (N, 6): xyz in the unit sphere + rgb in [0, 1].

The cloud is centred at its centroid and scaled so its farthest point is at distance 1,
then exactly `num_points` points are chosen: seeded farthest-point sampling (default,
covers the shape evenly, what Point-BERT-style encoders expect) or seeded random sampling.
Files without colour get grey (0.5) points and `meta["has_color"] = False`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checks import check_int

from .base import MB, Limits, LoadedInput, Modality, ModalityError, check_positive
from .point_io import CLOUD_EXTENSIONS, MESH_EXTENSIONS, read_cloud
from .point_sampling import farthest_point_indices, normalize_unit_sphere, pad_indices, random_indices
from .registry import register_modality
from .sniff import Sniffed

GREY = 0.5
SAMPLING_METHODS = ("fps", "random")


@dataclass(frozen=True)
class PointLimits(Limits):
    """num_points: points in the output; min_points: fewer are refused (between the two, points repeat);
    sampling: "fps" or "random"; seed: for every random choice; fps_candidates: clouds bigger than this
    are first thinned at random to this many points (keeps FPS well under a second);
    mesh_samples: points sampled on a mesh surface before `sampling` picks num_points;
    keep_exact: a cloud of exactly num_points points is kept as stored, in the file's order (how the
    original reads its 8192-point .npy files; sampling would reorder them);
    preview_points: points drawn in the 3-D scatter."""

    max_bytes: int = 100 * MB
    num_points: int = 2048
    min_points: int = 32
    sampling: str = "fps"
    seed: int = 0
    fps_candidates: int = 32_768
    mesh_samples: int = 16_384
    keep_exact: bool = False
    preview_points: int = 2048

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_points", "min_points", "fps_candidates", "mesh_samples", "preview_points"):
            check_positive(self, name, int)
        if not isinstance(self.keep_exact, bool):
            raise ModalityError(f"PointLimits.keep_exact must be True or False, got {self.keep_exact!r}")
        if self.sampling not in SAMPLING_METHODS:
            raise ModalityError(f"PointLimits.sampling must be one of {SAMPLING_METHODS}, got {self.sampling!r}")
        check_int(self.seed, "seed", 0, error=ModalityError, owner="PointLimits")
        if self.min_points > self.num_points:
            raise ModalityError(f"PointLimits.min_points ({self.min_points}) must not exceed num_points ({self.num_points})")
        if self.fps_candidates < self.num_points:
            raise ModalityError(f"PointLimits.fps_candidates ({self.fps_candidates}) must be at least "
                                f"num_points ({self.num_points})")


class PointModality(Modality):
    name = "point"
    label = "point cloud"
    what = "a point cloud or 3-D mesh"
    extensions = CLOUD_EXTENSIONS + MESH_EXTENSIONS
    # text: xyz/pts/obj/off/ascii stl/gltf/pcd headers; binary STL headers are arbitrary ("unknown").
    content_kinds = frozenset({"npy", "ply", "glb", "text"})
    limits_type = PointLimits

    def _fix_hint(self) -> str:
        return "Downsample the point cloud or simplify the mesh and upload it again."

    def _check_content(self, file: Path, sniffed: Sniffed) -> None:
        super()._check_content(file, sniffed)
        required = {".npy": "npy", ".ply": "ply", ".glb": "glb"}.get(file.suffix.lower())
        if required and sniffed.kind != required:  # these formats have a fixed magic
            raise self.decode_error(file, sniffed, mismatch=True)

    def _decode(self, file: Path, sniffed: Sniffed) -> LoadedInput:
        limits: PointLimits = self.limits
        raw = read_cloud(file, max(limits.mesh_samples, limits.num_points), limits.seed)
        count = raw.xyz.shape[0]
        if count < limits.min_points:
            raise ModalityError(f"{file.name} has only {count} point(s); at least {limits.min_points} are needed.")
        try:
            xyz, centre, scale = normalize_unit_sphere(raw.xyz)
        except ValueError:
            raise ModalityError(f"{file.name}: all {count} points are at the same position; there is no shape to see.") from None
        notes: list[str] = []
        has_color = raw.rgb is not None
        rgb = raw.rgb if has_color else np.full_like(xyz, GREY)
        if not has_color:
            notes.append("the file has no colours: points are shown grey")
        indices, how = self._choose(xyz, notes)
        data = torch.from_numpy(np.concatenate([xyz[indices], rgb[indices]], axis=1).astype(np.float32))
        meta: dict[str, Any] = {"points_in_file": count, "has_color": has_color, "sampling": how,
                                "seed": limits.seed, "centre": centre.tolist(), "scale": scale, **raw.facts}
        return LoadedInput(self.name, data.contiguous(), file.name, notes, meta)

    def _choose(self, xyz: np.ndarray, notes: list[str]) -> tuple[np.ndarray, str]:
        """Indices of exactly num_points points, and how they were chosen."""
        limits: PointLimits = self.limits
        count, wanted = xyz.shape[0], limits.num_points
        if count < wanted:
            notes.append(f"only {count} points: all are used and {wanted - count} are repeated to reach {wanted}")
            return pad_indices(count, wanted, limits.seed), "all + repeats"
        if count == wanted and limits.keep_exact:
            return np.arange(count), "as stored"
        if limits.sampling == "random":
            return random_indices(count, wanted, limits.seed), "random"
        candidates = np.arange(count)
        if count > limits.fps_candidates:
            candidates = np.sort(random_indices(count, limits.fps_candidates, limits.seed))
        chosen = candidates[farthest_point_indices(xyz[candidates], wanted, limits.seed)]
        return chosen, "fps" if count <= limits.fps_candidates else f"fps over {limits.fps_candidates} random candidates"

    def preview(self, loaded: LoadedInput) -> dict[str, Any]:
        from .previews import point_scatter

        self._check_loaded(loaded)
        return {"scatter": point_scatter(loaded.data, loaded.source_name, self.limits.preview_points),
                "ply_bytes": point_cloud_to_ply_bytes(loaded)}


def point_cloud_to_ply_bytes(loaded: LoadedInput) -> bytes:
    """A binary little-endian PLY (float xyz, uchar rgb) of a loaded point cloud, for 3-D viewers."""
    data = loaded.data.detach().cpu().numpy() if isinstance(loaded, LoadedInput) else None
    if data is None or data.ndim != 2 or data.shape[1] != 6:
        got = tuple(data.shape) if data is not None else type(loaded).__name__
        raise ModalityError(f"point_cloud_to_ply_bytes needs a loaded point cloud of shape (N, 6), got {got}")
    rows = np.empty(data.shape[0], dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                          ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, axis in enumerate("xyz"):
        rows[axis] = data[:, i]
    colours = np.clip(np.round(data[:, 3:6] * 255.0), 0, 255).astype(np.uint8)
    for i, channel in enumerate(("red", "green", "blue")):
        rows[channel] = colours[:, i]
    safe_name = "".join(c if c.isprintable() else "_" for c in loaded.source_name)  # one header line
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"comment from {safe_name}\n"
              f"element vertex {data.shape[0]}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    return header.encode("ascii", errors="replace") + rows.tobytes()


def save_ply(loaded: LoadedInput, path: str | os.PathLike) -> Path:
    """Write `point_cloud_to_ply_bytes(loaded)` to `path` and return it."""
    out = Path(path)
    out.write_bytes(point_cloud_to_ply_bytes(loaded))
    return out


register_modality(PointModality())
