"""The load test (tests/load_test.py) with 4 sessions and a few requests each: correctness, not timing.

Run the bigger ones by hand, e.g. ``python tests/load_test.py --clients 32 --requests-per-client 4``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parent / "load_test.py"


def test_four_sessions_get_their_own_answers_while_sliders_move(base_cache_dir):
    env = dict(os.environ, MLLM_STUDIO_CACHE=str(base_cache_dir))
    done = subprocess.run([sys.executable, str(SCRIPT), "--clients", "4", "--requests-per-client", "2", "--json",
                           "--timeout", "1500"], capture_output=True, text=True, timeout=1600, env=env, cwd=SCRIPT.parent.parent)
    assert done.stdout.strip(), done.stderr[-3000:]
    report = json.loads(done.stdout)
    valid, invalid, sliders = report["valid"], report["invalid"], report["sliders"]
    assert not report["timed_out"] and report["alone"]["problems"] == []
    # Every valid request was answered exactly as the same request alone (own selection, λ, μ, question).
    assert valid["sent"] > 0 and valid["correct"] == valid["sent"], valid["problems"]
    assert report["distinct_expected_ui_answers"] == 4  # so an answer given to the wrong session would show
    # Every invalid request was refused with the message it gets alone, and the server kept serving.
    assert invalid["sent"] > 0 and invalid["refused_as_alone"] == invalid["sent"], invalid["problems"]
    assert any("question is empty" in m for m in report["alone"]["refusals"].values())
    assert any("could not be decoded as an image" in m for m in report["alone"]["refusals"].values())
    # The slider session's recomposes carried its own coefficients.
    assert sliders["recomposes"] > 0 and sliders["wrong"] == 0, sliders["problems"]
    assert report["queue"]["bounded"] and report["queue"]["polls"] > 0
    assert report["memory_mb"]["peak_rss_vmhwm"] > 0 and report["ok"] and done.returncode == 0
