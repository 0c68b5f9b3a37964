"""Finding experts and loading user inputs before any model loads.

Both steps are cheap and run first, so a bad file or a missing expert folder fails in
about a second with a clear message instead of after a 10-second model load.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .composer import ModalInput
from .errors import CompositionError, ExpertError
from .expert import EXPERT_JSON, ExpertConfig
from .lora import read_json

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_EXPERTS = REPO_ROOT / "assets" / "experts"


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
            inputs.append(ModalInput.from_loaded(get_modality(modality).load(path)))
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
