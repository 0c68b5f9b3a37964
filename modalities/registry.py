"""The modality registry: the only list of modalities; the prompt builder and the UI read it.

Each modality module calls `register_modality(...)` when it is imported; the registration
order is the order modalities appear in prompts (image, audio, video, point, as in the paper).
"""
from __future__ import annotations

import os
from pathlib import Path

from .base import Modality, ModalityError, base_name

_REGISTRY: dict[str, Modality] = {}


def register_modality(modality: Modality) -> Modality:
    """Add a modality instance (with default limits) under `modality.name`; names are unique."""
    if not isinstance(modality, Modality):
        raise TypeError(f"register_modality expects a Modality instance, got {type(modality).__name__}")
    if not modality.name or modality.name in _REGISTRY:
        raise ValueError(f"modality name {modality.name!r} is empty or already registered")
    taken = {ext: m.name for m in _REGISTRY.values() for ext in m.extensions}
    clash = sorted(ext for ext in modality.extensions if ext in taken)
    if clash:  # modality_for_file must be unambiguous
        raise ValueError(f"extensions {clash} of {modality.name!r} are already claimed by {[taken[e] for e in clash]}")
    _REGISTRY[modality.name] = modality
    return modality


def list_modalities() -> list[str]:
    """Registered modality names in prompt order."""
    return list(_REGISTRY)


def get_modality(name: str) -> Modality:
    """The registered modality called `name`; `ModalityError` naming the accepted names otherwise."""
    if isinstance(name, str) and name.strip().lower() in _REGISTRY:
        return _REGISTRY[name.strip().lower()]
    raise ModalityError(f"unknown modality {name!r}; accepted: {', '.join(_REGISTRY)}")


def modality_for_file(path: str | os.PathLike) -> str:
    """Guess the modality of a file from its extension (content is checked later, by `load`)."""
    ext = Path(os.fspath(path)).suffix.lower()
    for modality in _REGISTRY.values():
        if ext in modality.extensions:
            return modality.name
    accepted = "; ".join(f"{m.name}: {m.accepted()}" for m in _REGISTRY.values())
    shown = f"extension '{Path(os.fspath(path)).suffix}'" if ext else "no extension"
    raise ModalityError(f"{base_name(path)} has {shown}, which no modality accepts. Accepted: {accepted}.")
