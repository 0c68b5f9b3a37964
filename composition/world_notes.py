"""What the bundled experts know: a note when one of them reads a file that is not one of its examples.

The bundled experts were trained on the synthetic world only (their ``trained_on``); asked
about a real photo they still answer in its terms, and the card says why.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable, Sequence

from .discovery import BUNDLED_EXPERTS, PACKAGE_ROOT, REPO_ROOT
from .inputs import ModalInput, file_digest

# The example inputs: the repository's, or the copy an installed library carries.
EXAMPLES = next((p for p in (REPO_ROOT / "examples", PACKAGE_ROOT / "examples") if p.is_dir()), REPO_ROOT / "examples")


@functools.cache
def example_digests() -> frozenset[str]:
    """Contents of every file under examples/: a copy the UI made of an example still matches."""
    if not EXAMPLES.is_dir():
        return frozenset()
    return frozenset(file_digest(p) for p in EXAMPLES.rglob("*") if p.is_file())


def is_bundled(expert) -> bool:
    """An expert loaded from the bundled folder (it knows only the synthetic world)."""
    folder = getattr(expert, "path", None)
    return folder is not None and Path(folder).resolve().is_relative_to(BUNDLED_EXPERTS.resolve())


def world_notes(experts: Iterable, inputs: Sequence[ModalInput]) -> dict[str, str]:
    """expert name -> a note, for each bundled expert that reads an input which is not one of the examples
    (compared by the inputs' content digests, computed once per input)."""
    notes = {}
    for expert in experts:
        if not is_bundled(expert) or not expert.config.trained_on:
            continue
        for item in inputs:
            if item.modality == expert.modality and item.digest not in example_digests():
                notes[expert.name] = (f"{expert.name} is a bundled demo expert: it knows only {expert.config.trained_on} "
                                      f"{item.source_name or 'this ' + item.modality} is not one of its examples, so expect "
                                      "an answer in those terms. Load real experts (python -m composition import "
                                      "modelcompose …) for real files.")
                break
    return notes
