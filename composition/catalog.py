"""Finding experts and loading user inputs before any model loads.

Both steps are cheap and run first, so a bad file or a missing expert folder fails in
about a second with a clear message instead of after a 10-second model load.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .composer import ModalInput
from .errors import CompositionError, ExpertError
from .expert import EXPERT_JSON, ExpertConfig
from .lora import read_json

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_EXPERTS = REPO_ROOT / "assets" / "experts"
EXAMPLES = REPO_ROOT / "examples"
MAX_DIGEST_BYTES = 200 * 2**20  # uploads are capped at 100 MB; larger files are not examples anyway


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


def load_inputs(files: Mapping[str, Sequence[str | Path]]) -> list[ModalInput]:
    """Load and validate each file with its modality's loader, in prompt (modality) order."""
    from modalities import MODALITY_NAMES, get_modality

    inputs = []
    for modality in MODALITY_NAMES:
        for path in files.get(modality, ()) or ():
            inputs.append(ModalInput.from_loaded(get_modality(modality).load(path), path))
    unknown = sorted(set(files) - set(MODALITY_NAMES))
    if unknown:
        raise CompositionError(f"unknown input modality {unknown[0]!r}; expected one of {MODALITY_NAMES}.")
    return inputs


def fetch_expert(source: str, *, cache_dir: Path | None = None) -> Path:
    """An expert folder from a local path or a Hugging Face hub id (``owner/name[/subfolder]``).

    Only ``*.json`` and ``*.safetensors`` files are downloaded: nothing pickled is ever fetched.
    """
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "/", "~")):
        if not (path / EXPERT_JSON).is_file():
            raise ExpertError(f"{path.name!r} is not an expert folder (no expert.json inside); pass the folder that holds expert.json.")
        return path
    parts = source.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise ExpertError(f"{source!r} is neither an existing folder nor a hub id like 'owner/name' (optionally '/subfolder').")
    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        from huggingface_hub import snapshot_download

        pattern = f"{subfolder}/**" if subfolder else "**"
        local = snapshot_download(repo_id, allow_patterns=[f"{pattern}.json", f"{pattern}.safetensors", "*.json", "*.safetensors"],
                                  cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:  # network errors, missing repos, auth: one clear message
        raise ExpertError(f"could not download expert {source!r} from the Hugging Face hub ({type(exc).__name__}); "
                          "no network? Copy the expert folder here and pass its path instead.") from None
    folder = Path(local) / subfolder if subfolder else Path(local)
    if not (folder / EXPERT_JSON).is_file():
        raise ExpertError(f"hub repo {repo_id!r}{' folder ' + repr(subfolder) if subfolder else ''} holds no expert.json; "
                          "it is not an expert in this studio's format.")
    return folder


# --- what the bundled experts know --------------------------------------------------
def file_digest(path: str | Path) -> str | None:
    """sha256 of a file's contents (None when unreadable or too large to be an example)."""
    try:
        path = Path(path)
        if path.stat().st_size > MAX_DIGEST_BYTES:
            return None
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


@functools.cache
def example_digests() -> frozenset[str]:
    """Contents of every file under examples/: a copy the UI made of an example still matches."""
    if not EXAMPLES.is_dir():
        return frozenset()
    return frozenset(d for p in EXAMPLES.rglob("*") if p.is_file() and (d := file_digest(p)))


def is_bundled(expert) -> bool:
    """An expert loaded from the bundled folder (it knows only the synthetic world)."""
    folder = getattr(expert, "path", None)
    return folder is not None and Path(folder).resolve().is_relative_to(BUNDLED_EXPERTS.resolve())


def world_notes(experts: Iterable, files: Mapping[str, Sequence[str | Path]]) -> dict[str, str]:
    """expert name -> a note, for each bundled expert that reads an input which is not one of the examples.

    The bundled experts were trained on the synthetic world only (their ``trained_on``); asked
    about a real photo they still answer in its terms ("a cone, a star and an orange ball").
    """
    notes = {}
    known = None
    for expert in experts:
        if not is_bundled(expert) or not expert.config.trained_on:
            continue
        for path in files.get(expert.modality, ()) or ():
            known = example_digests() if known is None else known
            if file_digest(path) not in known:
                notes[expert.name] = (f"{expert.name} is a bundled demo expert: it knows only {expert.config.trained_on} "
                                      f"{Path(path).name} is not one of its examples, so expect an answer in those terms. "
                                      "Load real experts (python -m composition import modelcompose …) for real files.")
                break
    return notes


# --- the coefficients a folder of experts was composed with ---------------------------
COMPOSITION_DEFAULTS = "composition.json"


def default_coefficients(paths: Sequence[Path | str] | None):
    """The λ and μ a folder of experts ships with (``composition.json`` ``{"lambdas", "mus"}``, written
    by ``python -m composition import modelcompose`` for a merged checkpoint), else the paper's defaults.

    Several folders: their files merge; a value given twice must agree. The user's own
    ``--lambda`` / ``--mu`` (or sliders) override these.
    """
    from .variants import Coefficients

    lambdas: dict[str, float] = {}
    mus: dict[str, float] = {}
    for raw in paths or ():
        path = Path(raw) / COMPOSITION_DEFAULTS
        if not path.is_file():
            continue
        data = read_json(path, f"{Path(raw).name}/{COMPOSITION_DEFAULTS}")
        if not isinstance(data, dict) or not {"lambdas", "mus"} <= set(data):
            continue  # another file of that name (an export's manifest): not coefficients
        found = Coefficients(dict(data["lambdas"] or {}), dict(data["mus"] or {}))  # validates ranges and names
        for mine, theirs, what in ((lambdas, found.lambdas, "λ"), (mus, found.mus, "μ")):
            for key, value in theirs.items():
                if key in mine and mine[key] != value:
                    raise CompositionError(f"{what} for {key!r} is {mine[key]} in one {COMPOSITION_DEFAULTS} and {value} in "
                                           "another; load one composition at a time.")
                mine[key] = float(value)
    return Coefficients(lambdas, mus)
