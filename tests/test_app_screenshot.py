"""A headless Chromium screenshot of the running app, and its key elements from /config."""
from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from tests.app_server import app_url  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EXAMPLE_IMAGE = Path(__file__).resolve().parent.parent / "examples" / "image-example.png"
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


BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium; "
                                             "./studio.sh test installs packages-test.txt)")
def test_a_user_sees_the_inputs_compares_and_gets_answer_cards(app_url):  # noqa: F811
    """In a real browser: four upload boxes, the Compare button; after a compare, one answer card per variant."""
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(app_url, wait_until="load", timeout=120_000)
            page.get_by_role("button", name="Compare all variants").wait_for(timeout=120_000)  # the app has rendered
            for label in ("Image", "Audio", "Video", "Point cloud"):
                box = page.locator(f'[data-testid="block-label"]:text-is("{label}")')
                assert box.count() >= 1 and box.first.is_visible(), f"no visible {label} input box"
            compare = page.get_by_role("button", name="Compare all variants")
            assert compare.is_visible()
            page.screenshot(path=str(SHOTS / "app.png"), full_page=True)
            page.get_by_label("Question").first.fill("What is it?")
            # Upload an image as a user would (the Image box's file input; the first on the page).
            page.locator('input[type="file"]').first.set_input_files(str(EXAMPLE_IMAGE))
            page.locator('[data-testid="image"] img, .image-frame img').first.wait_for(timeout=60_000)
            compare.click()
            page.wait_for_function("document.querySelectorAll('.mc-card .mc-meta').length > 0 && "
                                   "[...document.querySelectorAll('.mc-card .mc-meta')].every(m => m.textContent.includes('tokens'))",
                                   timeout=240_000)
            names = page.locator(".mc-card .mc-name").all_inner_texts()
            page.screenshot(path=str(SHOTS / "app-answers.png"), full_page=True)
        finally:
            browser.close()
    # One image: DAMC (over the image expert alone: the others got no input) and the image expert, each a card.
    assert names == ["DAMC", "expert:image"], names
