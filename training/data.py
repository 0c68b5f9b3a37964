"""Training data for one modality: rendered scenes, loaded and encoded once, cached.

Frozen encoders (image, audio, video) are run once per scene here, so a training step
only runs the LLM. The point encoder is trained, so point scenes keep their loaded
(N, 6) clouds and are encoded in the step. Questions are drawn per step from the scene
(`training.instructions.question_for`), so one encoded scene serves many questions.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .world import CATEGORIES, COLOUR_NAMES, EXTENSIONS, MODALITIES, Scene, SceneObject, World, render

# Which frozen encoder each modality's bundled experts use (point: pre-trained here, see point_pretrain).
ENCODERS = {"image": "efficientnet-lite0", "audio": "whisper-tiny.en", "video": "efficientnet-lite0-video", "point": "point-fps-knn"}


@dataclass
class ModalityData:
    modality: str
    scenes: list[Scene]
    inputs: list[torch.Tensor]  # encoder features (frozen encoders) or loaded clouds (point)

    def __len__(self) -> int:
        return len(self.scenes)


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


def prepare_modality(modality: str, n_scenes: int, seed: int, cache_dir: Path, log=print) -> ModalityData:
    """Render ``n_scenes`` scenes of ``modality`` and encode them (cached by modality, n and seed)."""
    from modalities import get_modality
    from modalities.encoders import get_encoder

    folder = Path(cache_dir) / f"{modality}-n{n_scenes}-s{seed}"
    meta_file, tensor_file = folder / "scenes.json", folder / "inputs.safetensors"
    if meta_file.is_file() and tensor_file.is_file():
        scenes = [_scene_from_json(s) for s in json.loads(meta_file.read_text())]
        tensors = load_file(str(tensor_file))
        return ModalityData(modality, scenes, [tensors[str(i)] for i in range(len(scenes))])
    folder.mkdir(parents=True, exist_ok=True)
    world = World(seed)
    rng = np.random.default_rng([seed, 11, MODALITIES.index(modality)])
    loader = get_modality(modality)
    encoder = None if modality == "point" else get_encoder(ENCODERS[modality])
    scenes, inputs = [], []
    for i in range(n_scenes):
        scene = world.sample_scene(rng)
        path = render(scene, modality, folder / f"{i:05d}{EXTENSIONS[modality]}")
        data = loader.load(path).data
        inputs.append(data if encoder is None else encoder.encode(data))
        path.unlink()  # the encoded tensor is all training needs
        scenes.append(scene)
        if (i + 1) % 100 == 0:
            log(f"  {modality}: {i + 1}/{n_scenes} scenes rendered and encoded")
    save_file({str(i): t.contiguous() for i, t in enumerate(inputs)}, str(tensor_file))
    meta_file.write_text(json.dumps([_scene_to_json(s) for s in scenes]))
    return ModalityData(modality, scenes, inputs)
