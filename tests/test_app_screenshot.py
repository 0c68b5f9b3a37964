"""A headless Chromium screenshot of the running app, and its key elements from /config."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.app_server import app_url  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(os.environ.get("STUDIO_SCREENSHOTS", Path(__file__).resolve().parent.parent / ".cache" / "screenshots"))


def test_page_config_has_the_tabs_and_controls(app_url):  # noqa: F811
    config = json.load(urllib.request.urlopen(f"{app_url}/config", timeout=30))
    labels = {c["props"].get("label") for c in config["components"]}
    assert {"Compare", "Experts", "Benchmark", "Learn", "Export"} <= labels
    assert {"Question", "Image", "Audio", "Video", "Point cloud", "Experts taking part", "Loaded experts",
            "Add merge methods as comparison columns", "max new tokens", "temperature (0 = greedy)", "top-p"} <= labels
    assert any(str(l).startswith("λ image") for l in labels) and any(str(l).startswith("μ point") for l in labels)
    names = {d.get("api_name") for d in config["dependencies"]}
    assert {"compare", "compare_ui", "recompose", "benchmark", "sweep", "token_routing", "save_config", "load_config",
            "export_model", "add_expert"} <= names
    assert all(d.get("api_name") for d in config["dependencies"]), "every event needs an api_name"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium; "
                                             "./studio.sh test installs packages-test.txt)")
def test_screenshot_of_the_page(app_url):  # noqa: F811
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / "app.png"
    shot.unlink(missing_ok=True)
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--virtual-time-budget=15000", f"--screenshot={shot}", "--window-size=1400,2400", app_url],
                   capture_output=True, timeout=120, check=False)
    assert shot.is_file() and shot.stat().st_size > 20_000, "chromium wrote no (or an empty) screenshot"
