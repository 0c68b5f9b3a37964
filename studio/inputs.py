"""User files -> validated inputs (ModalityError messages pass through untouched), and previews.

An upload is decoded once per process: the point-cloud preview, a Compare and the token
routing view of the same file share one ``ModalInput`` (kept by file identity, a few at a
time), which holds every decoded form and the features computed from them.
"""
from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from composition.inputs import ModalInput, decoder_needs, load_inputs
from composition.world_notes import world_notes
from modalities import MODALITY_NAMES, LoadedInput, get_modality


def file_path(value) -> str | None:
    """A path from what a UI component or API client hands over (str, dict with 'path', or None)."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        value = value.get("path") or value.get("name")
    if isinstance(value, (list, tuple)):  # gr.Video in some versions: (video, subtitles)
        value = value[0] if value else None
    return os.fspath(value) if value else None


def collect_files(media: Mapping[str, object]) -> dict[str, list[str]]:
    """``{modality: [path]}`` for the inputs given (``{modality: component value}``), in prompt order."""
    return {m: [p] for m in MODALITY_NAMES if (p := file_path(media.get(m)))}


class InputCache:
    """Inputs decoded in this process, by file identity (path, size, modification time), least recently used first out.

    Gradio stores each upload under its own path, so the same path with the same size and
    time is the same upload; a file changed in place gets a new entry.
    """

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple, ModalInput] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, modality: str, path: str, forms) -> ModalInput:
        """The input of ``path`` with ``forms`` decoded (decoded now if new: a bad file raises its ModalityError)."""
        try:
            st = os.stat(path)
            key = (modality, os.path.realpath(path), st.st_size, st.st_mtime_ns)
        except OSError:
            key = None  # the loader says what is wrong with it
        with self._lock:
            item = self._items.get(key) if key else None
            if item is not None:
                self._items.move_to_end(key)
        if item is None:
            (item,) = load_inputs({modality: [path]}, {modality: list(forms)})
            if key:
                with self._lock:
                    self._items[key] = item
                    while len(self._items) > self.capacity:
                        self._items.popitem(last=False)
        for limits in forms:
            item.decoded(limits)
        return item


INPUTS = InputCache()


def load_user_inputs(files: Mapping[str, list[str]], experts: Iterable = ()) -> list[ModalInput]:
    """Validate and decode every file in the forms ``experts``' encoders read (default forms when none);
    the first bad one raises its ModalityError (names the file, says the fix)."""
    needs = decoder_needs(experts)
    return [INPUTS.get(m, path, needs.get(m) or [{}]) for m in MODALITY_NAMES for path in files.get(m, ()) or ()]


def outside_world_notes(experts: Mapping, plan, inputs) -> dict[str, str]:
    """Notes for the bundled experts of ``plan`` that read a file which is not one of the examples."""
    taking_part = {n for v in plan.variants for n in v.experts}
    return world_notes([experts[n] for n in taking_part if n in experts], inputs)


def point_accept() -> list[str]:
    """Extensions the point-cloud upload accepts (the registry's list)."""
    return list(get_modality("point").extensions)


def point_preview(path) -> tuple[object, str]:
    """(plotly 3-D scatter, path of a temporary .ply for a 3-D viewer) of an uploaded point cloud."""
    path = file_path(path)
    if path is None:
        return None, None
    modality = get_modality("point")
    item = INPUTS.get("point", path, [{}])
    form = item.decoded()
    preview = modality.preview(LoadedInput("point", form.data, item.source_name, list(form.notes), dict(form.meta)))
    handle = tempfile.NamedTemporaryFile(prefix="points-", suffix=".ply", delete=False)
    with handle:
        handle.write(preview["ply_bytes"])
    return preview["scatter"], handle.name


# Meshes a 3-D viewer (gr.Model3D) renders from the one uploaded file (.gltf may need side files; .off is unknown to it).
VIEWER_MESHES = (".obj", ".glb", ".stl")


@dataclass
class PointViews:
    """Previews of an uploaded point cloud or mesh.

    figure: plotly 3-D scatter of the sampled points (what the encoder sees).
    model_path: a file for an interactive 3-D viewer: the uploaded mesh itself, or a
        .ply of the sampled, normalised points.
    display_mode: how the viewer draws it: "solid" (a mesh) or "point_cloud".
    """

    figure: object
    model_path: str
    display_mode: str


def point_views(path) -> PointViews | None:
    """Both previews of an uploaded point file (None without one); a bad file raises its ModalityError."""
    path = file_path(path)
    if path is None:
        return None
    figure, ply = point_preview(path)
    if _is_viewer_mesh(Path(path)):
        return PointViews(figure, path, "solid")
    return PointViews(figure, ply, "point_cloud")


def _is_viewer_mesh(path: Path) -> bool:
    ext = path.suffix.lower()
    if ext in VIEWER_MESHES:
        return True
    if ext == ".ply":
        from modalities.point_io import ply_face_count

        try:
            return ply_face_count(path) > 0
        except Exception:  # noqa: BLE001 - the loader accepted it; the points preview is shown instead
            return False
    return False
