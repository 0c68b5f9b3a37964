"""The blind-vote load test (tests/vote_load_test.py): 32 voters at once, the server killed and restarted mid-run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parent / "vote_load_test.py"


def test_32_voters_each_vote_stored_exactly_once_across_a_crash(base_cache_dir):
    env = dict(os.environ, MLLM_STUDIO_CACHE=str(base_cache_dir))
    done = subprocess.run([sys.executable, str(SCRIPT), "--voters", "32", "--json", "--timeout", "1200"], capture_output=True,
                          text=True, timeout=1300, env=env, cwd=SCRIPT.parent.parent)
    assert done.stdout.strip(), done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert not report["timed_out"], report
    assert report["acknowledged_before_crash"] >= 16 and report["lost_after_crash"] == [], report
    assert report["votes_stored"] == 32 and report["exactly_once"], report
    assert report["repeat_votes_refused"] == 32 and report["ok"] and done.returncode == 0
