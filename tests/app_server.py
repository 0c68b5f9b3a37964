"""A running app for the app tests: random experts on the real base, served on a free loopback port."""
from __future__ import annotations

import socket

import pytest

from composition.random_models import save_random_experts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(studio):
    """Serve ``studio`` with python app.py's own build and launch code; yields the URL, closes the server after."""
    import app

    demo = app.build_demo(studio)
    _, url, _ = app.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield url.rstrip("/")
    finally:
        demo.close()


@pytest.fixture(scope="module")
def app_url(smollm2, base_cache_dir, tmp_path_factory):
    """URL of the app (python app.py's own build and launch code) with image, audio, video and point experts."""
    from studio.session import load_studio

    folder = save_random_experts(smollm2, tmp_path_factory.mktemp("app-experts"), ("image", "audio", "video", "point"))
    # A base of its own: the composed model wraps the base's layers, the session's smollm2 stays plain.
    studio = load_studio([folder], cache_dir=base_cache_dir, device="cpu")
    studio.votes_path = tmp_path_factory.mktemp("votes") / "votes.sqlite3"  # never the workspace's own database
    assert studio.cm.experts and not studio.load_problems, f"test experts did not load: {studio.load_problems}"
    yield from serve(studio)


@pytest.fixture(scope="module")
def bundled_app_url(base_cache_dir, tmp_path_factory):
    """URL of the app with the bundled experts (what ./studio.sh app starts), on a free loopback port."""
    from composition.discovery import BUNDLED_EXPERTS
    from studio.session import load_studio

    studio = load_studio([BUNDLED_EXPERTS], cache_dir=base_cache_dir, device="cpu")
    assert len(studio.cm.experts) == 8 and not studio.load_problems, studio.load_problems
    studio.votes_path = tmp_path_factory.mktemp("votes") / "votes.sqlite3"
    yield from serve(studio)
