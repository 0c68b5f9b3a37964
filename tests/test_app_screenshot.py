"""A headless Chromium screenshot of the running app, and its key elements from /config."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from tests.app_server import app_url, bundled_app_url  # noqa: F401  (fixtures)

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
            "export_model", "add_expert", "schedule_typed", "retention", "tune_without_labels", "interference_rerun"} <= names
    assert {"λ schedule", "Stored run", "also: what each variant keeps of the base's text skills "
            "(retention, ~100 text-only questions)"} <= labels
    assert all(d.get("api_name") for d in config["dependencies"]), "every event needs an api_name"


BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def browser_page(url: str, width: int, height: int):
    """A page of headless Debian Chromium (Playwright's driver, no browser download) with the app loaded."""
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url, wait_until="load", timeout=120_000)
            yield page
        finally:
            browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium; "
                                             "./studio.sh test installs packages-test.txt)")
def test_a_user_sees_the_inputs_compares_and_gets_answer_cards(app_url):  # noqa: F811
    """In a real browser: four upload boxes, the Compare button; after a compare, one answer card per variant."""
    with browser_page(app_url, 1400, 1800) as page:
        page.get_by_role("tab", name="Compare").click()  # Chat is the first tab
        page.get_by_role("button", name="Compare all variants").wait_for(timeout=120_000)  # the app has rendered
        for label in ("Image", "Audio", "Video", "Point cloud"):
            box = page.locator(f'[data-testid="block-label"]:text-is("{label}")')
            assert box.count() >= 1 and box.first.is_visible(), f"no visible {label} input box"
        compare = page.get_by_role("button", name="Compare all variants")
        assert compare.is_visible()
        page.screenshot(path=str(SHOTS / "app.png"), full_page=True)
        page.get_by_label("Question").first.fill("What is it?")
        # Upload an image as a user would (the Image box's file input).
        page.locator('#media-image input[type="file"]').set_input_files(str(EXAMPLE_IMAGE))
        page.locator('[data-testid="image"] img, .image-frame img').first.wait_for(timeout=60_000)
        compare.click()
        page.wait_for_function("document.querySelectorAll('.mc-card .mc-meta').length > 0 && "
                               "[...document.querySelectorAll('.mc-card .mc-meta')].every(m => m.textContent.includes('tokens'))",
                               timeout=240_000)
        names = page.locator(".mc-card .mc-name").all_inner_texts()
        page.screenshot(path=str(SHOTS / "app-answers.png"), full_page=True)
    # One image: DAMC (over the image expert alone: the others got no input) and the image expert, each a card.
    assert names == ["DAMC", "expert:image"], names


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium; "
                                             "./studio.sh test installs packages-test.txt)")
def test_a_three_turn_chat_with_files_in_turns_1_and_3_keeps_every_columns_history(app_url):  # noqa: F811
    """In a real browser: the image example with the first question, two follow-ups, the audio example in turn 3;
    every column shows the whole conversation, and each answer's footer the coefficients it was made with."""
    audio = Path(__file__).resolve().parent.parent / "examples" / "audio-example.wav"
    turns = [("What is in the image?", EXAMPLE_IMAGE), ("What colour is it?", None), ("And what do you hear?", audio)]
    with browser_page(app_url, 1600, 2000) as page:
        box = page.locator("#chat-box")
        box.wait_for(timeout=120_000)
        for k, (text, file) in enumerate(turns, start=1):
            if file is not None:
                box.locator('input[type="file"]').set_input_files(str(file))
                page.wait_for_function("() => document.querySelectorAll('#chat-box [class*=thumbnail-item]').length > 0",
                                       timeout=60_000)  # the upload is shown in the box
            box.locator("textarea").fill(text)
            box.locator("textarea").press("Enter")
            # Done when every visible column holds k answers, each with its footer (seconds).
            # (The box empties itself once the answers are complete; on an error the message stays in it.)
            page.wait_for_function(
                """k => {
                    if (document.querySelector('#chat-box textarea').value !== '') return false;
                    const cols = [...document.querySelectorAll('[id^="chat-column-"]')].filter(c => c.offsetParent !== null);
                    return cols.length > 0 && cols.every(c => {
                        const bots = [...c.querySelectorAll('[data-testid="bot"]')];
                        return bots.length === k && bots.every(b => / s|joined/.test(b.innerText));
                    });
                }""", arg=k, timeout=300_000)
        columns = page.evaluate("""() => [...document.querySelectorAll('[id^="chat-column-"]')]
            .filter(c => c.offsetParent !== null)
            .map(c => ({label: (c.querySelector('[data-testid="block-label"]') || {}).innerText || '',
                        user: [...c.querySelectorAll('[data-testid="user"]')].map(u => u.innerText.trim()),
                        images: c.querySelectorAll('[data-testid="user"] img').length,
                        bots: [...c.querySelectorAll('[data-testid="bot"]')].map(b => b.innerText)}))""")
        page.screenshot(path=str(SHOTS / "chat.png"), full_page=True)
    labels = [c["label"].strip() for c in columns]
    assert labels == ["DAMC", "expert:image", "expert:audio"], labels
    for column in columns:
        said = [u for u in column["user"] if u]
        assert [t for t, _ in turns] == [s for s in said if s in {t for t, _ in turns}], column  # every turn, in order
        assert len(column["bots"]) == 3 and column["images"] >= 1, column  # the image preview
        assert any(u.startswith("audio-example.wav") for u in said), column  # the audio player, named
    damc = columns[0]["bots"]
    assert "λ image 1.00" in damc[0] and "λ image 1.00" in damc[1] and "λ image 0.50, audio 0.50" in damc[2], damc


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium; "
                                             "./studio.sh test installs packages-test.txt)")
def test_the_compare_tab_after_a_run_with_the_bundled_experts(bundled_app_url):  # noqa: F811
    """The README's picture: the image and audio examples compared by every composition and expert. The
    screenshot goes to $STUDIO_SCREENSHOTS (``STUDIO_SCREENSHOTS=assets/screenshots`` remakes the committed one)."""
    audio = Path(__file__).resolve().parent.parent / "examples" / "audio-example.wav"
    with browser_page(bundled_app_url, 1400, 1100) as page:
        page.get_by_role("tab", name="Compare").click()
        compare = page.get_by_role("button", name="Compare all variants")
        compare.wait_for(timeout=120_000)
        page.get_by_label("Question").first.fill("What do these inputs have in common?")
        page.locator('#media-image input[type="file"]').set_input_files(str(EXAMPLE_IMAGE))
        page.locator('[data-testid="image"] img, .image-frame img').first.wait_for(timeout=60_000)
        page.locator('#media-audio input[type="file"]').set_input_files(str(audio))
        page.wait_for_timeout(1500)
        compare.click()
        page.wait_for_function("document.querySelectorAll('.mc-card .mc-meta').length >= 6 && "
                               "[...document.querySelectorAll('.mc-card .mc-meta')].every(m => m.textContent.includes('tokens'))",
                               timeout=300_000)
        cards = page.locator(".mc-card").all_inner_texts()
        names = page.locator(".mc-card .mc-name").all_inner_texts()
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(500)
        page.screenshot(path=str(SHOTS / "compare.png"), full_page=False)
    assert names == ["NaiveMC", "DAMC", "expert:image", "expert:image-shared", "expert:audio", "expert:audio-shared"], names
    assert "λ image 0.50, audio 0.50" in cards[1], cards[1]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium; "
                                             "./studio.sh test installs packages-test.txt)")
def test_a_typed_lambda_schedule_locks_the_slider_and_plots_it_per_layer(app_url):  # noqa: F811
    """In a real browser: open an expert's "advanced: over the layers" box, type anchors, press Enter: the
    slider says the schedule is its λ now, and the plot under it draws the values per layer."""
    with browser_page(app_url, 1400, 1800) as page:
        page.get_by_text("Composition: λ, μ and merge methods").first.click()
        advanced = page.get_by_text("advanced: over the layers").first
        advanced.wait_for(timeout=120_000)
        advanced.click()
        box = page.get_by_label("λ schedule").first
        box.fill("0, 1")
        box.press("Enter")
        page.locator("label", has_text="λ image (text): over the layers (advanced)").first.wait_for(timeout=120_000)
        plot = page.locator(".vega-embed svg").first
        plot.wait_for(timeout=120_000)
        assert plot.is_visible()
        page.screenshot(path=str(SHOTS / "schedule.png"), full_page=True)
