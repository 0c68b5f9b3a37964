"""The process-wide session: one base LLM and one expert catalog, loaded once at startup.

Users share the loaded weights; what differs per user (selected experts, coefficients,
methods) travels with each request (see studio.variants.model_view), so nothing a user
does changes what another user's generation computes.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from composition.catalog import BUNDLED_EXPERTS, expert_folders
from composition.composer import ComposedModel
from composition.errors import ExpertError

EXPERTS_ENV = "STUDIO_EXPERTS"
BASE_ENV = "STUDIO_BASE"
NO_EXPERTS_HELP = ("No experts are loaded. Build the bundled ones with `python -m training.build_experts`, start the "
                   f"app with `python app.py --experts DIR` (or `{EXPERTS_ENV}=DIR`), or add an expert folder below.")


@dataclass
class Studio:
    """The loaded model plus what the header line and the catalog show."""

    cm: ComposedModel
    device: str = "cpu"
    base_seconds: float = 0.0
    load_problems: list[str] = field(default_factory=list)  # experts that failed at startup, with why

    @property
    def expert_names(self) -> list[str]:
        return list(self.cm.experts)

    def header(self) -> str:
        base = self.cm.base
        how = ", ".join(f"{k} {v:.1f} s" for k, v in getattr(base, "load_seconds", {}).items()) or f"{self.base_seconds:.1f} s"
        experts = f"{len(self.cm.experts)} expert(s) loaded" if self.cm.experts else "**no experts loaded**"
        return f"Base **{base.name}** loaded in {self.base_seconds:.1f} s ({how}) on **{self.device}** · {experts}"

    def catalog_rows(self) -> list[list[str]]:
        """One row per expert: name, modality, training, base, encoder, folder."""
        rows = []
        for e in self.cm.experts.values():
            folder = Path(e.folder).name if getattr(e, "folder", None) else "(in memory)"
            rows.append([e.name, e.modality, e.training, e.config.base_model_name, e.config.encoder.kind, folder])
        return rows

    def add_expert_folder(self, path: str) -> list[str]:
        """Load every expert under ``path`` (an expert folder or a folder of them); returns the new names."""
        path = (path or "").strip()
        if not path:
            raise ExpertError("type the path of an expert folder (one holding expert.json) or a Hugging Face hub id.")
        if not Path(path).expanduser().exists() and _looks_like_hub_id(path):
            from composition.catalog import fetch_expert  # json + safetensors only; clear "no network" error

            path = str(fetch_expert(path))
        folders = expert_folders([Path(path).expanduser()])
        if not folders:
            raise ExpertError(f"folder {Path(path).name!r} holds no expert.json (neither itself nor its sub-folders); "
                              "pick the folder an expert was saved to.")
        added = []
        for folder in folders:
            added.append(self.cm.load_expert(folder).name)
        return added


def _looks_like_hub_id(text: str) -> bool:
    parts = text.strip("/").split("/")
    return len(parts) >= 2 and all(parts) and not text.startswith((".", "/", "~"))


def expert_dirs_from(cli_dirs: Sequence[str] | None) -> list[Path]:
    """--experts DIR..., else $STUDIO_EXPERTS (os.pathsep-separated), else the bundled experts."""
    if cli_dirs:
        return [Path(d) for d in cli_dirs]
    env = os.environ.get(EXPERTS_ENV, "").strip()
    if env:
        return [Path(d) for d in env.split(os.pathsep) if d]
    return [BUNDLED_EXPERTS]


def load_studio(expert_dirs: Sequence[Path], base: str | None = None, device: str | None = None,
                cache_dir: Path | None = None) -> Studio:
    """Load the base once and every expert found; a broken expert is reported, not fatal."""
    import torch

    from composition.base_llm import load_base_llm

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    cm = ComposedModel(load_base_llm(base or os.environ.get(BASE_ENV) or None, device=device, cache_dir=cache_dir))
    studio = Studio(cm, device, time.perf_counter() - start)
    for d in expert_dirs:
        try:
            folders = expert_folders([d])
        except ExpertError as exc:
            if Path(d) != BUNDLED_EXPERTS:  # the bundled folder may legitimately not be built yet
                studio.load_problems.append(str(exc))
            continue
        for folder in folders:
            try:
                cm.load_expert(folder)
            except ValueError as exc:
                studio.load_problems.append(f"{folder.name}: {exc}")
    return studio
