"""Publishing an exported composition on the Hugging Face Hub, with the user's own token.

Offline, or without a token, it says why in one line and leaves the folder as it is.
"""
from __future__ import annotations

import os
from pathlib import Path

from .card import HUB_ID
from .errors import CompositionError


def hub_token() -> str | None:
    """The user's Hugging Face token (``HF_TOKEN`` or a ``hf auth login``), None without one."""
    from huggingface_hub import get_token

    return get_token()


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` to it; returns the repository's URL."""
    folder = Path(folder)
    if not isinstance(repo_id, str) or not HUB_ID.match(repo_id.strip()):
        raise CompositionError(f"--push {repo_id!r} is not a Hub repository id; give owner/name, e.g. me/my-composition.")
    left = f"the export stays in {folder.name}/"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise CompositionError(f"not pushed: the Hub is offline here (HF_HUB_OFFLINE is set); {left}.")
    token = token or hub_token()
    if not token:
        raise CompositionError(f"not pushed: no Hugging Face token (log in with `hf auth login` or set HF_TOKEN); {left}.")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id.strip(), private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id.strip(), repo_type="model",
                          commit_message="Upload a composition made with MLLM Composition Studio")
    except Exception as exc:  # network, permissions, a name taken: one line, the folder stays
        raise CompositionError(f"not pushed to {repo_id} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                               f"{left}.") from None
    return str(url)
