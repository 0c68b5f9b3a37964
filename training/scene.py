"""What a scene is: the world's categories, colours and modalities, a scene's objects, and its seeds.

The renderers (``render_*.py``) and the world (``world.py``: sampling scenes and ``render``)
both build on this module, so neither imports the other's module at load time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modalities.checks import check_int

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


def scene_rng(scene: Scene, modality: str) -> np.random.Generator:
    """The generator for one modality's rendering choices: independent per modality, so adding
    a draw to one renderer never changes the files of another."""
    return np.random.default_rng([scene.seed, MODALITIES.index(modality)])
