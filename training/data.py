"""Training data for one modality: rendered scenes, loaded and encoded once, cached.

Frozen encoders (image, audio, video) are run once per scene here, so a training step
only runs the LLM. The point encoder is trained, so point scenes keep their loaded
(N, 6) clouds and are encoded in the step. Questions are drawn per step from the scene
(`training.instructions.question_for`), so one encoded scene serves many questions.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .world import CATEGORIES, COLOUR_NAMES, EXTENSIONS, MODALITIES, Scene, SceneObject, World, render

# Which frozen encoder each modality's bundled experts use (point: pre-trained here, see point_pretrain).
# Training scenes per modality. The slot reader (training.slots) reads held-out images better
# from 3200 than from 800 (every slot right: 0.90 against 0.825, python -m training.diagnose
# slots); rendering and encoding are a one-off cost (cached in .cache/training), unlike LLM steps.
TRAIN_SCENES = 3200
ENCODERS = {"image": "efficientnet-lite0", "audio": "whisper-tiny.en", "video": "efficientnet-lite0-video", "point": "point-fps-knn"}


@dataclass
class ModalityData:
    modality: str
    scenes: list[Scene]
    inputs: list[torch.Tensor]  # encoder features (frozen encoders) or loaded clouds (point)

    def __len__(self) -> int:
        return len(self.scenes)

    @cached_property
    def scenes_with(self) -> dict[str, list[int]]:
        """category -> indices of the scenes holding it (multi-input training questions)."""
        return {c: [i for i, s in enumerate(self.scenes) if c in s.categories] for c in CATEGORIES}


def label_words(colours_known: bool = True) -> tuple[str, ...]:
    """The words a scene is labelled with: every category, then (when known) every colour."""
    return tuple(CATEGORIES) + (tuple(COLOUR_NAMES) if colours_known else ())


def scene_labels(data: ModalityData, colours_known: bool = True) -> torch.Tensor:
    """(scenes, label_words) 0/1 targets: which categories (and colours) each scene holds."""
    words = label_words(colours_known)
    y = torch.zeros(len(data), len(words))
    for i, scene in enumerate(data.scenes):
        for obj in scene.objects:
            y[i, words.index(obj.category)] = 1.0
            if colours_known:
                y[i, words.index(obj.colour)] = 1.0
    return y


def _scene_to_json(scene: Scene) -> dict:
    return {"seed": scene.seed, "objects": [[o.category, o.colour] for o in scene.objects]}


def _scene_from_json(data: dict) -> Scene:
    return Scene(tuple(SceneObject(c, k) for c, k in data["objects"]), int(data["seed"]))


def _cached(folder: Path) -> tuple[list[Scene], list[torch.Tensor]] | None:
    meta_file, tensor_file = folder / "scenes.json", folder / "inputs.safetensors"
    if not (meta_file.is_file() and tensor_file.is_file()):
        return None
    scenes = [_scene_from_json(s) for s in json.loads(meta_file.read_text())]
    tensors = load_file(str(tensor_file))
    return scenes, [tensors[str(i)] for i in range(len(scenes))]


def _largest_prefix(cache_dir: Path, modality: str, n_scenes: int, seed: int) -> tuple[list[Scene], list[torch.Tensor]]:
    """The biggest cached set of fewer scenes with the same seed: its scenes are the first ones
    of this set (the same generator draws them in the same order), so they are not rendered again."""
    sizes = []
    for folder in Path(cache_dir).glob(f"{modality}-n*-s{seed}"):
        size = folder.name[len(modality) + 2:-len(f"-s{seed}")]
        if size.isdigit() and int(size) < n_scenes:
            sizes.append(int(size))
    for size in sorted(sizes, reverse=True):
        cached = _cached(Path(cache_dir) / f"{modality}-n{size}-s{seed}")
        if cached is not None:
            return cached
    return [], []


def prepare_modality(modality: str, n_scenes: int, seed: int, cache_dir: Path, log=print) -> ModalityData:
    """Render ``n_scenes`` scenes of ``modality`` and encode them (cached by modality, n and seed;
    a cached smaller set of the same seed gives the first scenes)."""
    from modalities import get_modality
    from modalities.encoders import get_encoder

    folder = Path(cache_dir) / f"{modality}-n{n_scenes}-s{seed}"
    cached = _cached(folder)
    if cached is not None:
        return ModalityData(modality, *cached)
    prefix_scenes, prefix_inputs = _largest_prefix(cache_dir, modality, n_scenes, seed)
    folder.mkdir(parents=True, exist_ok=True)
    world = World(seed)
    rng = np.random.default_rng([seed, 11, MODALITIES.index(modality)])
    loader = get_modality(modality)
    encoder = None if modality == "point" else get_encoder(ENCODERS[modality])
    scenes, inputs = [], []
    for i in range(n_scenes):
        scene = world.sample_scene(rng)
        if i < len(prefix_scenes):
            if scene != prefix_scenes[i]:  # another world or generator made that cache: do not trust it
                raise ValueError(f"{folder.parent}: the cached {modality} scene {i} differs from the one seed {seed} "
                                 f"draws now; delete the {modality}-n*-s{seed} folders there and run again.")
            inputs.append(prefix_inputs[i])
        else:
            path = render(scene, modality, folder / f"{i:05d}{EXTENSIONS[modality]}")
            data = loader.load(path).data
            # contiguous, as the cache gives them back: a transposed view takes another matmul path,
            # and a fresh build must equal one from the cache bit for bit
            inputs.append((data if encoder is None else encoder.encode(data)).contiguous())
            path.unlink()  # the encoded tensor is all training needs
        scenes.append(scene)
        if (i + 1) % 100 == 0:
            log(f"  {modality}: {i + 1}/{n_scenes} scenes ready ({min(i + 1, len(prefix_scenes))} from the cache)")
    save_file({str(i): t for i, t in enumerate(inputs)}, str(folder / "inputs.safetensors"))
    (folder / "scenes.json").write_text(json.dumps([_scene_to_json(s) for s in scenes]))
    return ModalityData(modality, scenes, inputs)
