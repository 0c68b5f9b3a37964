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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from checks import check_int

# Order matters only for readability; every consumer refers to categories by name.
CATEGORIES: tuple[str, ...] = ("ball", "cube", "cone", "ring", "star", "drum", "cross", "diamond")

# RGB in 0..255. Saturated and far apart, so the colour of a small object survives the
# encoders' downscaling and video compression.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# What an expert trained on this world knows, as its expert.json ``trained_on`` says it.
TRAINED_ON = ("the synthetic world of training/world.py: 1-3 objects per scene, categories "
              + ", ".join(CATEGORIES) + "; colours " + ", ".join(COLOURS) + ". It knows nothing else.")

# How each category moves in a video and what it sounds like (the renderers implement these;
# the words are here so documentation, the UI and tests can show them).
MOTIONS: dict[str, str] = {
    "ball": "bounce", "cube": "slide", "cone": "spin", "ring": "orbit",
    "star": "pulse", "drum": "shake", "cross": "zigzag", "diamond": "rise",
}
SOUNDS: dict[str, str] = {
    "ball": "three bouncing blips", "cube": "a low square-wave buzz", "cone": "a rising chirp",
    "ring": "a bell", "star": "a high twinkling tremolo", "drum": "two low drum hits",
    "cross": "a two-tone beep", "diamond": "a falling chirp",
}
MODALITIES: tuple[str, ...] = ("image", "audio", "video", "point")
LABELS: dict[str, str] = {"image": "image", "audio": "audio", "video": "video", "point": "point cloud"}
EXTENSIONS: dict[str, str] = {"image": ".png", "audio": ".wav", "video": ".mp4", "point": ".npy"}
MAX_OBJECTS = 3
NUMBER_WORDS = ("zero", "one", "two", "three")


@dataclass(frozen=True)
class SceneObject:
    """One object: a category of CATEGORIES and a colour of COLOURS."""

    category: str
    colour: str

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown category {self.category!r}; expected one of {CATEGORIES}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {COLOUR_NAMES}")

    @property
    def phrase(self) -> str:
        """'a red ball' (an/a chosen by the colour's first letter: 'an orange cube')."""
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.category}"


@dataclass(frozen=True)
class Scene:
    """1..MAX_OBJECTS objects of distinct categories, plus the seed of every rendering choice
    (size, position, rotation, background, voice ...), so that rendering is deterministic."""

    objects: tuple[SceneObject, ...]
    seed: int

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene holds 1..{MAX_OBJECTS} objects, got {len(self.objects)}")
        cats = [o.category for o in self.objects]
        if len(set(cats)) != len(cats):
            # Distinct categories keep every question answerable ("what colour is the ball?").
            raise ValueError(f"scene categories must be distinct, got {cats}")
        check_int(self.seed, "seed", 0, owner="Scene")

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(o.category for o in self.objects)

    def colour_of(self, category: str) -> str | None:
        for obj in self.objects:
            if obj.category == category:
                return obj.colour
        return None

    def describe(self) -> str:
        """'A red ball, a blue cube and a green ring.' (the one phrasing every answer uses)."""
        phrases = [o.phrase for o in self.objects]
        text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return text[0].upper() + text[1:] + "."


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


def scene_rng(scene: Scene, modality: str) -> np.random.Generator:
    """The generator for one modality's rendering choices: independent per modality, so adding
    a draw to one renderer never changes the files of another."""
    return np.random.default_rng([scene.seed, MODALITIES.index(modality)])


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
