"""The synthetic world (DESIGN.md §5) and the data built from it.

- `world`: categories, colours, scenes and `render(scene, modality, path)`;
  the per-modality renderers live in `render_image`, `render_audio`, `render_video`, `render_point`.
- `instructions`: per-modality instruction data, so each expert learns only its modality.
- `mcub_synth`: MCUB-synth, the commonality benchmark built so only a composition can solve it.

Importing this package is cheap; renderers (PIL, soundfile, scipy, ffmpeg) load on first use.
"""
from .world import (CATEGORIES, COLOURS, COLOUR_NAMES, LABELS, MODALITIES, MOTIONS, SOUNDS, Scene,
                    SceneObject, World, render)

__all__ = ["CATEGORIES", "COLOURS", "COLOUR_NAMES", "LABELS", "MODALITIES", "MOTIONS", "SOUNDS",
           "Scene", "SceneObject", "World", "render"]
