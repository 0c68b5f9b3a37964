"""Finding experts on disk before any model loads: folders, their ``expert.json``, their digest.

Cheap and first, so a missing expert folder fails in about a second with a clear message
instead of after a 10-second model load.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import CompositionError, ExpertError
from .expert import EXPERT_JSON, ExpertConfig
from .lora import read_json

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent


def _bundled_experts() -> Path:
    """The bundled experts: ``assets/experts`` of the repository, or the copy an installed library carries."""
    for folder in (REPO_ROOT / "assets" / "experts", PACKAGE_ROOT / "bundled" / "experts"):
        if folder.is_dir():
            return folder
    return REPO_ROOT / "assets" / "experts"


BUNDLED_EXPERTS = _bundled_experts()


def workspace_root() -> Path:
    """Where caches and built sets go: the repository when running from a checkout, else the working directory."""
    return REPO_ROOT if (REPO_ROOT / "training").is_dir() else Path.cwd()


@dataclass(frozen=True)
class ExpertEntry:
    """An expert folder and its parsed ``expert.json`` (weights not loaded yet)."""

    folder: Path
    config: ExpertConfig


def expert_folders(paths: Iterable[Path | str]) -> list[Path]:
    """Expand each path: an expert folder itself, or a folder whose sub-folders are experts."""
    found = []
    for raw in paths:
        path = Path(raw)
        if (path / EXPERT_JSON).is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.iterdir() if (p / EXPERT_JSON).is_file())
        else:
            raise ExpertError(f"expert folder {path.name!r} does not exist; pass a folder that holds expert.json "
                              "(or a folder of such folders).")
    return found


def folder_digest(folder: Path | str) -> str:
    """sha256 over an expert folder's files (names and contents; links are not followed):
    what a stored result was computed with, so a rerun can tell when the weights changed."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.is_symlink()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def scan_experts(paths: Sequence[Path | str] | None = None) -> list[ExpertEntry]:
    """Parse every expert.json under ``paths`` (default: the bundled experts)."""
    paths = list(paths) if paths else [BUNDLED_EXPERTS]
    folders = expert_folders(paths)
    if not folders:
        raise ExpertError("no experts found: the bundled experts are not built yet (python -m training.build_experts) "
                          "or the folders passed hold no expert.json. Pass --experts DIR.")
    entries = []
    names: dict[str, Path] = {}
    for folder in folders:
        where = f"expert folder {folder.name!r}"
        config = ExpertConfig.from_json(read_json(folder / EXPERT_JSON, where), where)
        if config.name in names:
            raise ExpertError(f"two experts are named {config.name!r} ({names[config.name].name!r} and {folder.name!r}); "
                              "expert names must be unique.")
        names[config.name] = folder
        entries.append(ExpertEntry(folder, config))
    return entries


# --- the coefficients a folder of experts was composed with ---------------------------
COMPOSITION_DEFAULTS = "composition.json"


def _shipped(paths: Sequence[Path | str] | None):
    """``(folder name, data)`` of every ``composition.json`` among ``paths`` that holds coefficients."""
    for raw in paths or ():
        path = Path(raw) / COMPOSITION_DEFAULTS
        if not path.is_file():
            continue
        data = read_json(path, f"{Path(raw).name}/{COMPOSITION_DEFAULTS}")
        if isinstance(data, dict) and {"lambdas", "mus"} <= set(data):  # else another file of that name (an export's manifest)
            yield Path(raw).name, data


def default_coefficients(paths: Sequence[Path | str] | None):
    """The λ and μ a folder of experts ships with (``composition.json`` ``{"lambdas", "mus"}``, written
    by ``python -m composition import modelcompose`` for a merged checkpoint), else the paper's defaults.

    Several folders: their files merge; a value given twice must agree. The user's own
    ``--lambda`` / ``--mu`` (or sliders) override these.
    """
    from .variants import Coefficients

    lambdas: dict[str, float] = {}
    mus: dict[str, float] = {}
    for _, data in _shipped(paths):
        found = Coefficients(dict(data["lambdas"] or {}), dict(data["mus"] or {}))  # validates ranges and names
        for mine, theirs, what in ((lambdas, found.lambdas, "λ"), (mus, found.mus, "μ")):
            for key, value in theirs.items():
                if key in mine and mine[key] != value:
                    raise CompositionError(f"{what} for {key!r} is {mine[key]} in one {COMPOSITION_DEFAULTS} and {value} in "
                                           "another; load one composition at a time.")
                mine[key] = float(value)
    return Coefficients(lambdas, mus)


def ships_merge_all_experts(paths: Sequence[Path | str] | None) -> bool:
    """Whether a folder of experts is a merged checkpoint of the original, whose DAMC merges every
    expert whatever inputs are given (``composition.json`` ``"merge_all_experts": true``)."""
    return any(data.get("merge_all_experts") is True for _, data in _shipped(paths))
