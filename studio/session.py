"""The process-wide session: one base LLM and one expert catalog, loaded once at startup.

Users share the loaded weights; what differs per user (selected experts, coefficients,
methods) travels with each request (the engine's plan, ComposedModel.plan), so nothing a user
does changes what another user's generation computes.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from composition.config import CompositionConfig, shipped_config
from composition.discovery import BUNDLED_EXPERTS, expert_folders
from composition.composer import ComposedModel
from composition.errors import ExpertError
from composition.expert import EXPERT_JSON

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
    load_problems: list[str] = field(default_factory=list)  # experts that failed to load (startup or added), with why
    defaults: CompositionConfig = field(default_factory=CompositionConfig)  # what the expert folders ship with (composition.json)
    votes_path: Path | None = None  # the blind votes' database (None: $STUDIO_VOTES_DB, else .cache/votes.sqlite3)
    _votes: object = field(default=None, repr=False)

    def vote_store(self):
        """The blind votes' database, opened on first use."""
        if self._votes is None:
            from .votes import VoteStore

            self._votes = VoteStore(self.votes_path)
        return self._votes

    @property
    def expert_names(self) -> list[str]:
        return list(self.cm.experts)

    def header(self) -> str:
        base = self.cm.base
        how = ", ".join(f"{k} {v:.1f} s" for k, v in getattr(base, "load_seconds", {}).items()) or f"{self.base_seconds:.1f} s"
        experts = f"{len(self.cm.experts)} expert(s) loaded" if self.cm.experts else "**no experts loaded**"
        return f"Base **{base.name}** loaded in {self.base_seconds:.1f} s ({how}) on **{self.device}** · {experts}"

    def catalog_rows(self) -> list[list[str]]:
        """One row per expert: name, modality, training, base, encoder, folder ("(removed)" when it is gone)."""
        rows = []
        gone = self.missing_folders()
        for e in self.cm.experts.values():
            folder = expert_folder(e)
            shown = "(in memory)" if folder is None else folder.name + (" (removed)" if e.name in gone else "")
            rows.append([e.name, e.modality, e.training, e.config.base_model_name, e.config.encoder.kind, shown])
        return rows

    def missing_folders(self, names: Iterable[str] | None = None) -> dict[str, Path]:
        """Loaded experts (of ``names``, default all) whose folder no longer holds expert.json: name -> folder.

        Experts live in memory once loaded, so such an expert keeps answering; what is lost is
        the way back (re-adding it, or another process reading the folder).
        """
        experts = self.cm.experts
        chosen = experts if names is None else [n for n in names if n in experts]
        gone = {}
        for name in chosen:
            folder = expert_folder(experts[name])
            if folder is not None and not (folder / EXPERT_JSON).is_file():
                gone[name] = folder
        return gone

    def folder_warnings(self, names: Iterable[str] | None = None) -> list[str]:
        """One readable line per expert whose folder was removed while the app runs."""
        return [f"the folder of expert {name!r} ({folder.name}/) was removed or moved while the app runs; the copy "
                "loaded in memory keeps answering, but it cannot be reloaded from there (restore the folder, or "
                "add it again from its new place after a restart)."
                for name, folder in self.missing_folders(names).items()]

    def add_expert_folder(self, path: str) -> list[str]:
        """Load every expert under ``path`` (an expert folder or a folder of them); returns the new names.

        A folder of experts loads what it can: each expert that fails (corrupt, a clash, or
        removed while loading) is recorded in ``load_problems`` with why; only when none
        loads is it an error (the first problem). A failed expert leaves nothing behind.
        """
        path = (path or "").strip()
        if not path:
            raise ExpertError("type the path of an expert folder (one holding expert.json) or a Hugging Face hub id.")
        if not Path(path).expanduser().exists() and _looks_like_hub_id(path):
            from composition.fetch import fetch_expert  # json + safetensors only; clear "no network" error

            path = str(fetch_expert(path))
        try:
            folders = expert_folders([Path(path).expanduser()])
        except OSError as exc:  # the folder vanished between the check and the listing
            raise ExpertError(f"folder {Path(path).name!r} could not be read ({exc.strerror or exc}); "
                              "check that it still exists.") from None
        if not folders:
            raise ExpertError(f"folder {Path(path).name!r} holds no expert.json (neither itself nor its sub-folders); "
                              "pick the folder an expert was saved to.")
        added, problems = [], []
        for folder in folders:
            try:
                added.append(self._load_one(folder).name)
            except ExpertError as exc:
                problems.append(exc)
        if not added:
            raise problems[0]
        self.load_problems += [str(p) for p in problems]
        return added

    def _load_one(self, folder: Path):
        """Load one expert folder; a folder removed mid-way is an ExpertError that says so."""
        try:
            return self.cm.load_expert(folder)
        except ExpertError as exc:
            if not (folder / EXPERT_JSON).is_file():
                raise ExpertError(f"expert folder {folder.name!r} was removed while it was being loaded ({exc}); "
                                  "nothing was added from it.") from None
            raise
        except OSError as exc:
            raise ExpertError(f"expert folder {folder.name!r} could not be read while loading it "
                              f"({exc.strerror or exc}); it may have been removed or moved. Nothing was added from it.") from None


def expert_folder(expert) -> Path | None:
    """The folder an expert was loaded from (None for an expert built in memory)."""
    folder = getattr(expert, "path", None) or getattr(expert, "folder", None)
    return Path(folder) if folder else None


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
                cache_dir: Path | None = None, dtype=None) -> Studio:
    """Load the base once and every expert found; a broken expert is reported, not fatal."""
    import torch

    from composition.base_llm import load_base_llm

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    kwargs = {} if dtype is None else {"dtype": dtype}
    cm = ComposedModel(load_base_llm(base or os.environ.get(BASE_ENV) or None, device=device, cache_dir=cache_dir, **kwargs))
    studio = Studio(cm, device, time.perf_counter() - start)
    try:
        studio.defaults = shipped_config(expert_dirs)
    except ValueError as exc:  # a broken composition.json: the paper's defaults, and the catalog says why
        studio.load_problems.append(str(exc))
    for d in expert_dirs:
        try:
            folders = expert_folders([d])
        except ExpertError as exc:
            if Path(d) != BUNDLED_EXPERTS:  # the bundled folder may legitimately not be built yet
                studio.load_problems.append(str(exc))
            continue
        for folder in folders:
            try:
                studio._load_one(folder)
            except ValueError as exc:
                studio.load_problems.append(f"{folder.name}: {exc}")
    return studio
