"""Fetching an expert folder from the Hugging Face hub (json and safetensors only, never a pickle)."""
from __future__ import annotations

from pathlib import Path

from .errors import ExpertError
from .expert import EXPERT_JSON


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
