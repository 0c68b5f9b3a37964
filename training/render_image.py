"""Images (224×224 PNG) of a scene, and the 2-D silhouettes the video renderer reuses.

Each category has a distinct silhouette (circle, square, triangle, annulus, star, drum,
plus sign, rhombus) drawn with a darker outline, so it stays recognisable on any
background and at the encoders' input size. Drawing happens at SUPERSAMPLE× and is
downscaled with a fixed filter: smooth edges, and still deterministic (PIL's resampling
and PNG writer depend only on the pixels and the settings).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .scene import COLOURS, Scene, scene_rng

IMAGE_SIZE = 224
SUPERSAMPLE = 2
RADIUS_RANGE = (26.0, 40.0)  # bounding-circle radius of an object, in output pixels
ROTATION_JITTER = 20.0  # degrees, for the silhouettes that have an orientation
BACKGROUNDS = ((245, 245, 240), (232, 238, 245), (240, 236, 226), (228, 240, 230), (238, 238, 238))

Colour = tuple[int, int, int]


def shade(colour: Colour, factor: float) -> Colour:
    """Darker (factor < 1) or lighter (factor > 1, towards white) version of a colour."""
    if factor <= 1:
        return tuple(int(round(c * factor)) for c in colour)  # type: ignore[return-value]
    return tuple(int(round(c + (255 - c) * (factor - 1))) for c in colour)  # type: ignore[return-value]


def _rotate(points: list[tuple[float, float]], cx: float, cy: float, degrees: float) -> list[tuple[float, float]]:
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def star_polygon(r: float, inner: float = 0.42) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * inner
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((rad * math.cos(a), rad * math.sin(a)))
    return pts


def cross_polygon(r: float, arm: float = 0.32) -> list[tuple[float, float]]:
    w = r * arm
    return [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r),
            (-w, w), (-r, w), (-r, -w), (-w, -w)]


def draw_object(draw: ImageDraw.ImageDraw, category: str, cx: float, cy: float, r: float,
                angle: float, fill: Colour) -> None:
    """Draw one object's silhouette centred at (cx, cy) inside a circle of radius r.

    `angle` (degrees) rotates the shapes that have an orientation; the ball, ring and drum
    look the same at any angle (the drum is always drawn upright so its top reads as a top).
    """
    outline = shade(fill, 0.55)
    width = max(1, int(round(r * 0.07)))
    if category == "ball":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)
        h = r * 0.28  # a highlight: a ball, not a flat disc
        draw.ellipse((cx - r * 0.45 - h, cy - r * 0.45 - h, cx - r * 0.45 + h, cy - r * 0.45 + h), fill=shade(fill, 1.5))
    elif category == "ring":
        band = int(round(r * 0.45))  # the hole stays background: a ring, not a disc
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=outline, width=band)
        inner = r - width
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), outline=fill, width=max(1, band - 2 * width))
    elif category == "drum":
        w, h, e = r * 0.85, r * 0.6, r * 0.25  # half-width, half-height, ellipse half-height
        draw.ellipse((cx - w, cy + h - e, cx + w, cy + h + e), fill=fill, outline=outline, width=width)
        draw.rectangle((cx - w, cy - h, cx + w, cy + h), fill=fill)
        draw.line((cx - w, cy - h, cx - w, cy + h), fill=outline, width=width)
        draw.line((cx + w, cy - h, cx + w, cy + h), fill=outline, width=width)
        draw.ellipse((cx - w, cy - h - e, cx + w, cy - h + e), fill=shade(fill, 1.45), outline=outline, width=width)
    else:
        if category == "cube":
            s = r * 0.74
            shape = [(-s, -s), (s, -s), (s, s), (-s, s)]
        elif category == "cone":
            shape = [(0.0, -r), (r * 0.8, r * 0.75), (-r * 0.8, r * 0.75)]
        elif category == "star":
            shape = star_polygon(r)
        elif category == "cross":
            shape = cross_polygon(r)
        elif category == "diamond":
            shape = [(0.0, -r), (r * 0.6, 0.0), (0.0, r), (-r * 0.6, 0.0)]
        else:
            raise ValueError(f"no 2-D look for category {category!r}")
        draw.polygon(_rotate(shape, cx, cy, angle), fill=fill, outline=outline, width=width)


def background(rng: np.random.Generator, size: int) -> Image.Image:
    """A pale background: plain, a soft vertical gradient or a faint checker (equally likely).
    Smooth on purpose: noise textures would make PNGs large and teach nothing."""
    base = np.array(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], dtype=np.float32)
    kind = int(rng.integers(3))
    canvas = np.broadcast_to(base, (size, size, 3)).copy()
    if kind == 1:
        ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)[:, None, None]
        canvas += ramp * float(rng.uniform(6, 14))
    elif kind == 2:
        cell = int(rng.integers(size // 8, size // 4))
        ys, xs = np.indices((size, size))
        canvas -= (((ys // cell) + (xs // cell)) % 2)[..., None].astype(np.float32) * float(rng.uniform(5, 10))
    return Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8), "RGB")


def place(rng: np.random.Generator, radii: list[float], size: float, margin: float = 2.0,
          tries: int = 100, restarts: int = 50) -> list[tuple[float, float]]:
    """Centres for circles of the given radii inside a size×size square, without overlap.

    Rejection sampling, restarted from scratch when an early circle blocks the later ones.
    If no layout is found the radii are too big for the canvas, which is a bug in the
    renderer's constants, so it raises.
    """
    for _ in range(restarts):
        centres: list[tuple[float, float]] = []
        for r in radii:
            for _ in range(tries):
                x, y = rng.uniform(r + margin, size - r - margin, size=2)
                if all(math.hypot(x - px, y - py) >= r + pr + margin for (px, py), pr in zip(centres, radii)):
                    centres.append((float(x), float(y)))
                    break
            else:
                break
        if len(centres) == len(radii):
            return centres
    raise RuntimeError(f"could not place radii {radii} in a {size}×{size} canvas without overlap")


def render_image(scene: Scene, path: Path) -> Path:
    """Write the scene as a 224×224 RGB PNG."""
    rng = scene_rng(scene, "image")
    s = SUPERSAMPLE
    img = background(rng, IMAGE_SIZE * s)
    radii = [float(rng.uniform(*RADIUS_RANGE)) for _ in scene.objects]
    centres = place(rng, radii, IMAGE_SIZE)
    draw = ImageDraw.Draw(img)
    for obj, r, (cx, cy) in zip(scene.objects, radii, centres):
        angle = float(rng.uniform(-ROTATION_JITTER, ROTATION_JITTER))
        draw_object(draw, obj.category, cx * s, cy * s, r * s, angle, COLOURS[obj.colour])
    img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    img.save(path, format="PNG", optimize=False, compress_level=6)
    return path
