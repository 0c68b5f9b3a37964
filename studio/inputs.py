"""User files -> validated inputs (ModalityError messages pass through untouched), and previews."""
from __future__ import annotations

import os
import tempfile
from typing import Mapping

from composition.catalog import load_inputs
from composition.composer import ModalInput
from modalities import MODALITY_NAMES, get_modality


def file_path(value) -> str | None:
    """A path from what a UI component or API client hands over (str, dict with 'path', or None)."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        value = value.get("path") or value.get("name")
    if isinstance(value, (list, tuple)):  # gr.Video in some versions: (video, subtitles)
        value = value[0] if value else None
    return os.fspath(value) if value else None


def collect_files(image=None, audio=None, video=None, point=None) -> dict[str, list[str]]:
    """``{modality: [path]}`` for the inputs given, in prompt order."""
    given = dict(zip(MODALITY_NAMES, (image, audio, video, point)))
    return {m: [p] for m, v in given.items() if (p := file_path(v))}


def load_user_inputs(files: Mapping[str, list[str]]) -> list[ModalInput]:
    """Validate and decode every file; the first bad one raises its ModalityError (names the file, says the fix)."""
    return load_inputs(files)


def point_accept() -> list[str]:
    """Extensions the point-cloud upload accepts (the registry's list)."""
    return list(get_modality("point").extensions)


def point_preview(path) -> tuple[object, str]:
    """(plotly 3-D scatter, path of a temporary .ply for a 3-D viewer) of an uploaded point cloud."""
    path = file_path(path)
    if path is None:
        return None, None
    modality = get_modality("point")
    preview = modality.preview(modality.load(path))
    handle = tempfile.NamedTemporaryFile(prefix="points-", suffix=".ply", delete=False)
    with handle:
        handle.write(preview["ply_bytes"])
    return preview["scatter"], handle.name
