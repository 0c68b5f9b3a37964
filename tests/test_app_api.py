"""The /compare API contract, through gradio_client against the running app (real base, random experts)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.app_server import app_url  # noqa: F401  (fixture)

MEDIA = Path(importlib.util.find_spec("gradio").submodule_search_locations[0]) / "media_assets"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(app_url):  # noqa: F811
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_compare_signature_is_keyword_question_and_four_optional_files(client):
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/compare"]
    params = info["parameters"]
    assert [p["parameter_name"] for p in params] == ["question", "image", "audio", "video", "point"]
    assert [p["parameter_has_default"] for p in params[1:]] == [True] * 4


EXAMPLE_VIDEO = Path(__file__).resolve().parent.parent / "examples" / "video-example.mp4"


@pytest.mark.parametrize("video", [EXAMPLE_VIDEO, MEDIA / "videos" / "world.mp4"])
def test_compare_with_every_modality(client, video):
    from gradio_client import handle_file

    result = client.predict(question="What do these have in common?",
                            image=handle_file(str(MEDIA / "images" / "cheetah.jpg")),
                            audio=handle_file(str(MEDIA / "audio" / "cantina.wav")),
                            video=handle_file(str(video)),
                            point=handle_file(str(MEDIA / "models3d" / "Duck.glb")), api_name="/compare")
    names = [v["name"] for v in result["variants"]]
    assert names == ["DAMC", "expert:image", "expert:audio", "expert:video", "expert:point"]
    for v in result["variants"]:
        assert isinstance(v["answer"], str) and isinstance(v["new_tokens"], int) and isinstance(v["notes"], list)


def test_compare_with_some_inputs_omitted(client):
    from gradio_client import handle_file

    result = client.predict(question="What is this?", audio=handle_file(str(MEDIA / "audio" / "cantina.wav")),
                            api_name="/compare")
    assert [v["name"] for v in result["variants"]] == ["DAMC", "expert:audio"]


def test_a_bad_file_is_a_readable_error_and_the_app_keeps_serving(client, tmp_path):
    from gradio_client import handle_file

    bad = tmp_path / "holiday.png"
    bad.write_text("definitely not a picture")
    with pytest.raises(Exception, match=r"holiday.png could not be decoded as an image \(it looks like a text file\)"):
        client.predict(question="What is it?", image=handle_file(str(bad)), api_name="/compare")
    ok = client.predict(question="What is it?", image=handle_file(str(MEDIA / "images" / "cheetah.jpg")), api_name="/compare")
    assert [v["name"] for v in ok["variants"]] == ["DAMC", "expert:image"]
