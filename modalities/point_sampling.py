"""Pure numpy helpers for point clouds: normalisation, seeded sampling and mesh surface sampling.

Everything takes an explicit seed and uses its own `np.random.Generator`, so the same file
gives a bit-identical tensor every time, whatever else the process has drawn.
"""
from __future__ import annotations

import numpy as np


def normalize_unit_sphere(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre at the centroid and scale so the farthest point lies on the unit sphere (as Point-BERT does).

    Returns (normalised xyz, centre, scale); raises ValueError when all points coincide.
    """
    centre = xyz.mean(axis=0)
    centred = xyz - centre
    radius = float(np.sqrt((centred ** 2).sum(axis=1)).max())
    if not radius > 0 or not np.isfinite(radius):
        raise ValueError("all points are at the same position")
    return centred / radius, centre, radius


def farthest_point_indices(xyz: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Greedy farthest-point sampling of `count` distinct indices (count <= len(xyz)).

    The first point is drawn with `seed`; every next point is the one farthest from those
    chosen so far (ties go to the lowest index, so the result is deterministic).
    """
    n = xyz.shape[0]
    if not 0 < count <= n:
        raise ValueError(f"farthest-point sampling needs 0 < count <= {n}, got {count}")
    # One contiguous array per axis and preallocated buffers: about 6x faster than
    # (n, 3) row arithmetic, which matters because this loop runs `count` times.
    axes = [np.ascontiguousarray(xyz[:, k], dtype=np.float64) for k in range(3)]
    chosen = np.empty(count, dtype=np.int64)
    nearest = np.full(n, np.inf)
    dist, tmp = np.empty(n), np.empty(n)
    current = int(np.random.default_rng(seed).integers(n))
    for i in range(count):
        chosen[i] = current
        dist.fill(0.0)
        for axis in axes:
            np.subtract(axis, axis[current], out=tmp)
            np.multiply(tmp, tmp, out=tmp)
            dist += tmp
        np.minimum(nearest, dist, out=nearest)
        current = int(np.argmax(nearest))
    return chosen


def random_indices(n: int, count: int, seed: int) -> np.ndarray:
    """`count` distinct indices drawn uniformly with `seed` (count <= n)."""
    return np.random.default_rng(seed).choice(n, size=count, replace=False)


def pad_indices(n: int, count: int, seed: int) -> np.ndarray:
    """For a cloud smaller than `count`: every point once, the rest drawn with replacement (seeded)."""
    extra = np.random.default_rng(seed).integers(0, n, size=count - n)
    return np.concatenate([np.arange(n), extra])


def sample_mesh_surface(vertices: np.ndarray, triangles: np.ndarray, count: int, seed: int,
                        vertex_colors: np.ndarray | None = None,
                        uv_colors: "UVTexture | None" = None) -> tuple[np.ndarray, np.ndarray | None]:
    """`count` points uniformly on the surface: triangles drawn by area, barycentric points inside.

    Colours come from per-vertex colours (interpolated) or a texture (looked up at the
    interpolated UV), else None. Raises ValueError when the mesh has no area.
    """
    tri = vertices[triangles]  # (T, 3, 3)
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    total = float(areas.sum())
    if not total > 0 or not np.isfinite(total):
        raise ValueError("the mesh has no surface area")
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(areas), size=count, p=areas / total)
    r1, r2 = rng.random(count), rng.random(count)
    s = np.sqrt(r1)  # the square root makes the points uniform over each triangle
    weights = np.stack([1.0 - s, s * (1.0 - r2), s * r2], axis=1)  # (count, 3) barycentric
    points = np.einsum("nk,nkd->nd", weights, tri[picked])
    colors = None
    if vertex_colors is not None:
        colors = np.einsum("nk,nkd->nd", weights, vertex_colors[triangles[picked]])
    elif uv_colors is not None:
        colors = uv_colors.lookup(picked, weights)
    return points, colors


class UVTexture:
    """A texture and per-corner UVs (`triangle_uvs`, shape (3T, 2)) for colour lookup by triangle and barycentrics."""

    def __init__(self, image: np.ndarray, triangle_uvs: np.ndarray, flip_v: bool = False) -> None:
        self.image = image.astype(np.float64) / (255.0 if image.dtype == np.uint8 else 1.0)
        if self.image.ndim == 2:
            self.image = np.repeat(self.image[..., None], 3, axis=2)
        self.image = self.image[..., :3]
        self.uvs = triangle_uvs.reshape(-1, 3, 2)
        self.flip_v = flip_v

    def lookup(self, triangles: np.ndarray, weights: np.ndarray) -> np.ndarray:
        uv = np.einsum("nk,nkd->nd", weights, self.uvs[triangles])
        uv = uv - np.floor(uv)  # repeat wrapping
        height, width = self.image.shape[:2]
        v = 1.0 - uv[:, 1] if self.flip_v else uv[:, 1]
        cols = np.clip((uv[:, 0] * width).astype(np.int64), 0, width - 1)
        rows = np.clip((v * height).astype(np.int64), 0, height - 1)
        return self.image[rows, cols]
