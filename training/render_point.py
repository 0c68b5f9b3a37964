"""Point clouds (N×6 float32 .npy: xyz + rgb in 0..1) of a scene.

Each category is a parametric surface sampled uniformly by area (sphere, cube, cone,
torus, extruded star, cylinder, extruded plus sign, octahedron), so the shape, not the
point density, identifies it. Objects are scaled, turned about the vertical (y) axis,
tilted a little and placed apart on the ground plane. The project's loader re-centres,
rescales and farthest-point-samples the cloud, so absolute units do not matter.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .render_image import cross_polygon, star_polygon
from .scene import COLOURS, Scene, scene_rng

POINTS_PER_OBJECT = 1024
SCALE_RANGE = (0.8, 1.15)
MIN_GAP = 2.7  # centre distance between objects (shapes fit in a radius-1.15 ball)
COLOUR_NOISE = 0.03


def _area_choice(rng: np.random.Generator, areas: list[float], n: int) -> np.ndarray:
    """How many of n points each part gets, drawn in proportion to the part areas."""
    p = np.asarray(areas, dtype=np.float64)
    return rng.multinomial(n, p / p.sum())


def _disc(rng: np.random.Generator, n: int, radius: float) -> np.ndarray:
    """n points uniform on a disc (x, z)."""
    rad = radius * np.sqrt(rng.random(n))
    a = rng.uniform(0, 2 * np.pi, n)
    return np.stack([rad * np.cos(a), rad * np.sin(a)], axis=1)


def _extrude(rng: np.random.Generator, n: int, polygon: list[tuple[float, float]], depth: float) -> np.ndarray:
    """n points on the surface of a polygon (in the x-y plane) extruded along z by ±depth/2."""
    poly = np.asarray(polygon, dtype=np.float64)
    edges = np.roll(poly, -1, axis=0) - poly
    lengths = np.linalg.norm(edges, axis=1)
    x2, y2 = np.roll(poly[:, 0], -1), np.roll(poly[:, 1], -1)
    area = 0.5 * abs(float(np.sum(poly[:, 0] * y2 - x2 * poly[:, 1])))  # shoelace
    n_cap, n_side = _area_choice(rng, [2 * area, float(lengths.sum()) * depth], n)
    # Caps: rejection sampling in the bounding box with an even-odd point-in-polygon test.
    lo, hi = poly.min(axis=0), poly.max(axis=0)
    caps = np.empty((0, 2))
    while len(caps) < n_cap:
        cand = rng.uniform(lo, hi, size=(max(64, 2 * n_cap), 2))
        caps = np.concatenate([caps, cand[_inside(cand, poly)]])
    caps = caps[:n_cap]
    cap_z = np.where(rng.random(n_cap) < 0.5, -depth / 2, depth / 2)
    edge = rng.choice(len(poly), size=n_side, p=lengths / lengths.sum())
    u = rng.random(n_side)[:, None]
    side_xy = poly[edge] + u * edges[edge]
    side_z = rng.uniform(-depth / 2, depth / 2, n_side)
    return np.concatenate([np.column_stack([caps, cap_z]), np.column_stack([side_xy, side_z])])


def _inside(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    x, y = pts[:, 0:1], pts[:, 1:2]
    x1, y1 = poly[:, 0][None], poly[:, 1][None]
    x2, y2 = np.roll(poly[:, 0], -1)[None], np.roll(poly[:, 1], -1)[None]
    crosses = ((y1 > y) != (y2 > y)) & (x < (x2 - x1) * (y - y1) / np.where(y2 == y1, 1e-12, y2 - y1) + x1)
    return crosses.sum(axis=1) % 2 == 1


def shape_points(category: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points on the surface of a category's 3-D shape, centred at the origin, y up, radius ≈ 1."""
    if category == "ball":
        v = rng.normal(size=(n, 3))
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    if category == "cube":
        s = 0.75
        face = rng.integers(0, 6, n)
        pts = rng.uniform(-s, s, size=(n, 3))
        axis, sign = face // 2, np.where(face % 2 == 0, -s, s)
        pts[np.arange(n), axis] = sign
        return pts
    if category == "cone":  # apex up at y = 1, base disc of radius 0.8 at y = -0.75
        radius, height = 0.8, 1.75
        slant = math.hypot(radius, height)
        n_side, n_base = _area_choice(rng, [math.pi * radius * slant, math.pi * radius**2], n)
        h = np.sqrt(rng.random(n_side))  # distance from the apex, uniform by area
        a = rng.uniform(0, 2 * np.pi, n_side)
        side = np.stack([h * radius * np.cos(a), 1.0 - h * height, h * radius * np.sin(a)], axis=1)
        base = _disc(rng, n_base, radius)
        return np.concatenate([side, np.column_stack([base[:, 0], np.full(n_base, -0.75), base[:, 1]])])
    if category == "ring":  # torus in the x-y plane (stands up, like the 2-D ring), R = 0.75, r = 0.25
        big, small = 0.75, 0.25
        out = np.empty((0, 3))
        while len(out) < n:  # accept by (R + r cos v) / (R + r): uniform by area
            u, v = rng.uniform(0, 2 * np.pi, (2, 2 * n))
            keep = rng.random(2 * n) < (big + small * np.cos(v)) / (big + small)
            u, v = u[keep], v[keep]
            ring = np.stack([(big + small * np.cos(v)) * np.cos(u), (big + small * np.cos(v)) * np.sin(u),
                             small * np.sin(v)], axis=1)
            out = np.concatenate([out, ring])
        return out[:n]
    if category == "star":
        pts = _extrude(rng, n, [(x, -y) for x, y in star_polygon(1.0)], depth=0.35)
        return pts
    if category == "drum":  # upright cylinder with both caps
        radius, half = 0.8, 0.55
        n_side, n_caps = _area_choice(rng, [2 * math.pi * radius * 2 * half, 2 * math.pi * radius**2], n)
        a = rng.uniform(0, 2 * np.pi, n_side)
        side = np.stack([radius * np.cos(a), rng.uniform(-half, half, n_side), radius * np.sin(a)], axis=1)
        caps = _disc(rng, n_caps, radius)
        cap_y = np.where(rng.random(n_caps) < 0.5, -half, half)
        return np.concatenate([side, np.column_stack([caps[:, 0], cap_y, caps[:, 1]])])
    if category == "cross":
        return _extrude(rng, n, cross_polygon(1.0), depth=0.35)
    if category == "diamond":  # octahedron stretched along y: uniform on each face via a Dirichlet draw
        w = rng.dirichlet(np.ones(3), size=n)
        signs = np.where(rng.random((n, 3)) < 0.5, -1.0, 1.0)
        return w * signs * np.array([0.6, 1.0, 0.6])
    raise ValueError(f"no 3-D shape for category {category!r}")


def _rotation(yaw: float, tilt: float) -> np.ndarray:
    cy, sy, ct, st = math.cos(yaw), math.sin(yaw), math.cos(tilt), math.sin(tilt)
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_x = np.array([[1, 0, 0], [0, ct, -st], [0, st, ct]])
    return about_y @ about_x


def cloud(scene: Scene) -> np.ndarray:
    """The scene as float32 (objects × POINTS_PER_OBJECT, 6); rows shuffled so no order gives objects away."""
    rng = scene_rng(scene, "point")
    spread = 1.6 * len(scene.objects)
    centres: list[np.ndarray] = []
    while len(centres) < len(scene.objects):  # rejection: objects apart on the ground plane
        c = np.array([rng.uniform(-spread, spread), 0.0, rng.uniform(-spread, spread)])
        if all(np.linalg.norm(c - p) >= MIN_GAP for p in centres):
            centres.append(c)
    parts = []
    for obj, centre in zip(scene.objects, centres):
        xyz = shape_points(obj.category, POINTS_PER_OBJECT, rng)
        rot = _rotation(rng.uniform(0, 2 * np.pi), math.radians(rng.uniform(-15, 15)))
        xyz = xyz @ rot.T * rng.uniform(*SCALE_RANGE) + centre
        rgb = np.asarray(COLOURS[obj.colour], dtype=np.float64) / 255.0
        rgb = np.clip(rgb + rng.normal(0.0, COLOUR_NOISE, size=(POINTS_PER_OBJECT, 3)), 0.0, 1.0)
        parts.append(np.concatenate([xyz, rgb], axis=1))
    points = np.concatenate(parts)[rng.permutation(POINTS_PER_OBJECT * len(scene.objects))]
    return points.astype(np.float32)


def render_point(scene: Scene, path: Path) -> Path:
    """Write the scene as an N×6 float32 .npy (never pickled)."""
    np.save(path, cloud(scene), allow_pickle=False)
    return path


def save_ply(points: np.ndarray, path: str | Path) -> Path:
    """Optional: the same cloud as a binary PLY (float xyz, uchar rgb) for 3-D viewers."""
    if points.ndim != 2 or points.shape[1] != 6:
        raise ValueError(f"points must be (N, 6) xyz+rgb, got shape {points.shape}")
    rows = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                        ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, name in enumerate(("x", "y", "z")):
        rows[name] = points[:, i]
    for i, name in enumerate(("red", "green", "blue")):
        rows[name] = np.clip(np.round(points[:, 3 + i] * 255), 0, 255).astype(np.uint8)
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(points)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    out = Path(path)
    out.write_bytes(header.encode("ascii") + rows.tobytes())
    return out
