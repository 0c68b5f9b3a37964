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


def test_chat_is_stateless_and_takes_files_in_any_turn(client):
    """/chat: the caller sends the whole conversation (each variant's earlier answers included) and gets every
    variant's answer to the last turn; files travel inside the messages with handle_file."""
    from gradio_client import handle_file

    first = [{"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                          handle_file(str(MEDIA / "images" / "cheetah.jpg"))]}]
    one = client.predict(messages=first, experts=None, variants=None, lambdas=None, mus=None, max_new_tokens=4,
                         api_name="/chat")
    assert [v["name"] for v in one["variants"]] == ["DAMC", "expert:image"] and one["turns"] == 1
    history = first + [{"role": "assistant", "content": {v["name"]: v["answer"] for v in one["variants"]}},
                       {"role": "user", "content": [{"type": "text", "text": "And this sound?"},
                                                    handle_file(str(MEDIA / "audio" / "cantina.wav"))]}]
    two = client.predict(messages=history, experts=None, variants=None, lambdas={"image": 0.7}, mus=None, max_new_tokens=4,
                         api_name="/chat")
    assert [v["name"] for v in two["variants"]] == ["DAMC", "expert:image", "expert:audio"] and two["turns"] == 2
    assert two["variants"][0]["coefficients"]["lambdas"] == {"image": 0.7, "audio": 0.5}
    with pytest.raises(Exception, match="is not a file uploaded to this server"):
        client.predict(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}, "/etc/hostname.png"]}],
                       experts=None, variants=None, lambdas=None, mus=None, max_new_tokens=4, api_name="/chat")


def test_chat_takes_lambda_schedules_and_refuses_one_that_cannot_apply(client):
    """A λ over the layers (anchors) or by module ({filter, value} entries) travels as JSON, and the answer
    says which schedule was applied; a filter that matches no module is refused by name."""
    question = [{"role": "user", "content": "Name a shape."}]
    schedule = [{"filter": "self_attn", "value": [0, 1]}, {"value": 0.25}]
    out = client.predict(messages=question, experts=None, variants=["DAMC"], lambdas={"image": schedule, "audio": [0.5, 0]},
                         mus=None, max_new_tokens=4, api_name="/chat")
    # A text-only question: DAMC merges every expert, the two not given keep the paper's 1/K.
    assert out["variants"][0]["coefficients"]["lambdas"] == {"image": schedule, "audio": [0.5, 0.0], "video": 0.25,
                                                            "point": 0.25}
    with pytest.raises(Exception, match="λ for 'image': filter 'cross_attn' matches no module"):
        client.predict(messages=question, experts=None, variants=["DAMC"], lambdas={"image": [{"filter": "cross_attn", "value": 1}]},
                       mus=None, max_new_tokens=4, api_name="/chat")


def test_a_blind_round_and_its_vote_over_the_api(client):
    round_ = client.predict(messages=[{"role": "user", "content": "Which shape is best?"}], experts=None, max_new_tokens=4,
                            api_name="/arena_round")
    assert set(round_) == {"battle_id", "A", "B"}
    voted = client.predict(battle_id=round_["battle_id"], choice="B", api_name="/vote")
    again = client.predict(battle_id=round_["battle_id"], choice="A", api_name="/vote")
    assert voted["stored"] and not again["stored"] and voted["A"] != voted["B"]
    with pytest.raises(Exception, match="vote 'maybe' is not one of A, B, tie, both bad"):
        client.predict(battle_id=round_["battle_id"], choice="maybe", api_name="/vote")
