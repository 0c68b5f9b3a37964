"""Run the CLI in a real process, as users and scripts do."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args, cache=None, timeout=300, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m composition *args``; ``cache`` is the base-model cache (MLLM_STUDIO_CACHE); ``stdin``: piped input;
    ``env``: variables set for this process."""
    env = {**os.environ, **(env or {})}
    if cache is not None:
        env["MLLM_STUDIO_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-m", "composition", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, input=stdin)
