"""Videos (16 frames, 128×128, 8 fps = 2 s, H.264 MP4) of a scene's objects moving.

Every category moves its own way (world.MOTIONS): the ball bounces, the cube slides, the
cone spins, the ring orbits, the star pulses, the drum shakes, the cross zigzags and the
diamond rises. Motions are written as functions of the clip phase t in [0, 1] so that any
8 frames the loader samples still show them.

Frames are piped raw to ffmpeg. The encode is made byte-reproducible by a single encoder
thread (x264's multi-threaded decisions can differ between runs) and the bitexact flags
(no encoder version string or creation time in the container).
"""
from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .render_image import background, draw_object, place
from .scene import COLOURS, Scene, scene_rng

FRAME_SIZE = 128
NUM_FRAMES = 16
FPS = 8
SUPERSAMPLE = 2
RADIUS_RANGE = (12.0, 16.0)
MOTION_ROOM = 6.0  # extra radius kept free around each start position, so paths rarely collide
FFMPEG_TIMEOUT_S = 60


def motion(category: str, t: float, direction: float) -> tuple[float, float, float, float]:
    """(dx, dy, rotation degrees, scale) of a category at clip phase t; direction is ±1."""
    if category == "ball":  # two bounces: up and down, fastest near the floor
        return 0.0, -20.0 * abs(math.sin(2 * math.pi * t)), 0.0, 1.0
    if category == "cube":
        return direction * (-22.0 + 44.0 * t), 0.0, 0.0, 1.0
    if category == "cone":
        return 0.0, 0.0, direction * 360.0 * t, 1.0
    if category == "ring":
        a = 2 * math.pi * t * direction
        return 16.0 * math.cos(a), 16.0 * math.sin(a), 0.0, 1.0
    if category == "star":
        return 0.0, 0.0, 0.0, 1.0 + 0.35 * math.sin(4 * math.pi * t)
    if category == "drum":  # alternate sides every frame: a visible tremble at any sampling
        return 5.0 * (1 if round(t * (NUM_FRAMES - 1)) % 2 else -1), 0.0, 0.0, 1.0
    if category == "cross":
        tri = 4 * abs((2 * t) % 1.0 - 0.5) - 1  # triangle wave in [-1, 1], two periods
        return direction * (-20.0 + 40.0 * t), 12.0 * tri, 0.0, 1.0
    if category == "diamond":
        return 0.0, 20.0 - 40.0 * t, 0.0, 1.0
    raise ValueError(f"no motion for category {category!r}")


def frames(scene: Scene) -> np.ndarray:
    """The clip as uint8 (NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3); deterministic from the scene."""
    rng = scene_rng(scene, "video")
    s = SUPERSAMPLE
    bg = background(rng, FRAME_SIZE * s)
    radii = [float(rng.uniform(*RADIUS_RANGE)) for _ in scene.objects]
    centres = place(rng, [r + MOTION_ROOM for r in radii], FRAME_SIZE)
    angles = [float(rng.uniform(-20, 20)) for _ in scene.objects]
    directions = [float(rng.choice([-1.0, 1.0])) for _ in scene.objects]
    out = np.empty((NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    for f in range(NUM_FRAMES):
        t = f / (NUM_FRAMES - 1)
        img = bg.copy()
        draw = ImageDraw.Draw(img)
        for obj, r, (cx, cy), a0, d in zip(scene.objects, radii, centres, angles, directions):
            dx, dy, rot, scale = motion(obj.category, t, d)
            rr = r * scale
            x = min(max(cx + dx, rr), FRAME_SIZE - rr)  # keep the whole object in view
            y = min(max(cy + dy, rr), FRAME_SIZE - rr)
            draw_object(draw, obj.category, x * s, y * s, rr * s, a0 + rot, COLOURS[obj.colour])
        out[f] = np.asarray(img.resize((FRAME_SIZE, FRAME_SIZE), Image.Resampling.LANCZOS))
    return out


def encode_mp4(clip: np.ndarray, path: Path, fps: int = FPS) -> Path:
    """Encode uint8 (F, H, W, 3) RGB frames as a reproducible H.264 MP4 (yuv420p, decodable by decord)."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError("ffmpeg is needed to write videos and was not found on PATH; install it "
                           "(apt-get install ffmpeg) and try again")
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"clip must be uint8 (F, H, W, 3), got {clip.dtype} {clip.shape}")
    f, h, w, _ = clip.shape
    cmd = [exe, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps),
           "-i", "-", "-an", "-c:v", "libx264", "-preset", "medium", "-crf", "20", "-pix_fmt", "yuv420p",
           "-threads", "1", "-g", str(f), "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
           str(path)]
    result = subprocess.run(cmd, input=np.ascontiguousarray(clip).tobytes(), capture_output=True,
                            timeout=FFMPEG_TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed (exit {result.returncode}) writing {path.name}: "
                           f"{result.stderr.decode(errors='replace').strip()[-500:]}")
    return path


def render_video(scene: Scene, path: Path) -> Path:
    """Write the scene as a 2 s, 16-frame, 128×128 MP4."""
    return encode_mp4(frames(scene), path)
