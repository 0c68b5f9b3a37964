"""The synthetic world: concepts that exist in all four modalities, scenes, and `render`.

Real multimodal data cannot be downloaded here, so the bundled experts learn from a small
procedural world (DESIGN.md §5). Every object *category* has a 2-D look (a drawn
silhouette), a 3-D shape (a sampled parametric surface), a way of moving (video) and a
sound (audio, followed by its spoken name); every *colour* shows in images, videos and
point clouds, and is heard in the spoken name. A *scene* is 1-3 objects of distinct
categories; it carries its own seed, so rendering it is a pure function of the scene:
the same scene gives byte-identical files in every run.

    world = World(seed=0)
    scene = world.sample_scene(np.random.default_rng(1))
    render(scene, "image", "out/0001.png")
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from modalities.checks import check_int

# The scene vocabulary lives in scene.py (the renderers import it from there); the world re-exports it.
from .scene import (CATEGORIES, COLOUR_NAMES, COLOURS, EXTENSIONS, LABELS, MAX_OBJECTS, MODALITIES, MOTIONS,  # noqa: F401
                    NUMBER_WORDS, SOUNDS, TRAINED_ON, Scene, SceneObject, scene_rng)


class World:
    """A seeded source of scenes. `sample_scene` draws from the generator it is given, so a
    caller that owns one `numpy.random.Generator` gets a reproducible stream of scenes."""

    def __init__(self, seed: int = 0) -> None:
        check_int(seed, "seed", 0, owner="World")
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def sample_scene(self, rng: np.random.Generator | None = None, n_objects: int | None = None,
                     include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> Scene:
        """A random scene.

        Args:
            rng: the generator to draw from (default: the world's own).
            n_objects: 1..3; default uniform over 1..3 (at least len(include)).
            include: categories that must be in the scene.
            exclude: categories that must not be in the scene.
        Returns:
            A Scene with shuffled object order and its own rendering seed.
        """
        rng = self.rng if rng is None else rng
        for name in (*include, *exclude):
            if name not in CATEGORIES:
                raise ValueError(f"unknown category {name!r}; expected one of {CATEGORIES}")
        if set(include) & set(exclude):
            raise ValueError(f"categories {sorted(set(include) & set(exclude))} are both included and excluded")
        if len(set(include)) != len(include):
            raise ValueError(f"include lists a category twice: {include}")
        low = max(1, len(include))
        if n_objects is None:
            n_objects = int(rng.integers(low, MAX_OBJECTS + 1))
        if not low <= n_objects <= MAX_OBJECTS:
            raise ValueError(f"n_objects must be in {low}..{MAX_OBJECTS} (include={include}), got {n_objects}")
        pool = [c for c in CATEGORIES if c not in include and c not in exclude]
        extra = n_objects - len(include)
        if extra > len(pool):
            raise ValueError(f"cannot add {extra} more categories: only {pool} are left")
        chosen = list(include) + [pool[i] for i in rng.choice(len(pool), size=extra, replace=False)]
        order = rng.permutation(len(chosen))
        colours = rng.integers(0, len(COLOUR_NAMES), size=len(chosen))
        objects = tuple(SceneObject(chosen[i], COLOUR_NAMES[int(c)]) for i, c in zip(order, colours))
        return Scene(objects, int(rng.integers(0, 2**31 - 1)))


def _renderers() -> dict[str, Callable[[Scene, Path], Path]]:
    # Imported lazily: the audio renderer needs soundfile/espeak, the video one ffmpeg.
    from .render_audio import render_audio
    from .render_image import render_image
    from .render_point import render_point
    from .render_video import render_video

    return {"image": render_image, "audio": render_audio, "video": render_video, "point": render_point}


def render(scene: Scene, modality: str, path: str | os.PathLike) -> Path:
    """Write `scene` in `modality` ("image", "audio", "video", "point") to `path`; returns the path.

    The file type follows the modality (.png, .wav, .mp4, .npy); a path with another
    suffix is refused, so a file's extension always tells its loader.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    out = Path(os.fspath(path))
    if out.suffix.lower() != EXTENSIONS[modality]:
        raise ValueError(f"a {modality} is written as {EXTENSIONS[modality]}, got path {out.name!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return _renderers()[modality](scene, out)
