"""Inputs decoded once: a file's forms and features are kept by its ModalInput, however many readers it has."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import modalities.encoders as encoders
from composition.composer import ComposedModel
from composition.expert import EncoderRef
from composition.inputs import ModalInput, decoder_needs, load_inputs
from composition.random_models import FEATURE_DIM, random_expert, tiny_base
from modalities.base import Modality
from studio import handlers
from studio.inputs import INPUTS, point_views
from studio.session import Studio
from tests.test_studio_handlers import ask, short

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FILES = [EXAMPLES / "image-example.png", EXAMPLES / "audio-example.wav", EXAMPLES / "video-example.mp4",
         EXAMPLES / "point-example.npy"]
# The paper's encoders for two modalities (their weights replaced by a recorder): Point-BERT reads 8192
# points, not the point modality's default; BEATs reads 16 kHz audio.
KINDS = {"image": "efficientnet-lite0", "audio": "beats", "video": "efficientnet-lite0-video", "point": "point-bert"}


class Recorder:
    """A stand-in encoder that records the shape of each input it encodes."""

    def __init__(self, seen: list) -> None:
        self.seen = seen

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(data.shape))
        return torch.full((3, FEATURE_DIM), float(data.float().mean()))


@pytest.fixture
def counted(monkeypatch):
    """(decodes, encodes): every file decode (any modality, any limits) and every encoder call, recorded."""
    decodes, encodes = [], []
    real_load = Modality.load

    def load(self, path):
        decodes.append((self.name, Path(path).name, self.limits))
        return real_load(self, path)

    monkeypatch.setattr(Modality, "load", load)
    monkeypatch.setattr(encoders, "get_encoder", lambda *args, **kwargs: Recorder(encodes))
    INPUTS._items.clear()  # a fresh process's cache
    yield decodes, encodes
    INPUTS._items.clear()


def paper_studio() -> Studio:
    base = tiny_base()
    experts = []
    for i, (modality, kind) in enumerate(KINDS.items()):
        for training, suffix in (("decoupled", ""), ("shared", "-shared")):
            expert = random_expert(base, modality + suffix, modality, training, 700 + 2 * i + (training == "shared"))
            object.__setattr__(expert.config, "encoder", EncoderRef(kind, None, FEATURE_DIM))
            experts.append(expert)
    return Studio(ComposedModel(base, experts))  # the registry's encoders (here: recorders), bound once per expert


def test_a_four_input_compare_decodes_each_file_once_in_the_form_its_encoder_needs(counted):
    decodes, encodes = counted
    studio = paper_studio()
    values = ask("What do they share?", [str(f) for f in FILES], False, short(studio))
    first = list(handlers.compare_stream(studio, values))[-1]
    assert "NaiveMC" in first and "DAMC" in first
    assert sorted((m, name) for m, name, _ in decodes) == sorted(
        (m, f.name) for m, f in zip(("image", "audio", "video", "point"), FILES))  # one decode per file
    point_limits = next(limits for m, _, limits in decodes if m == "point")
    assert point_limits.num_points == 8192  # Point-BERT's form only; the default form was never decoded
    assert len(encodes) == 4  # each (file, encoder) once: decoupled and shared experts share an encoder kind
    # The same files again (another Compare, a slider-move recompose, the token-routing view): nothing decoded or encoded.
    list(handlers.compare_stream(studio, values))
    handlers.recompose(studio, values)
    handlers.token_routing(studio, "DAMC", values)
    assert len(decodes) == 4 and len(encodes) == 4


def test_the_point_preview_and_the_encoder_share_the_upload(counted):
    decodes, _ = counted
    cloud = str(EXAMPLES / "point-example.npy")
    assert point_views(cloud) is not None and point_views(cloud) is not None
    (item,) = load_inputs({"point": [cloud]})
    assert len(decodes) == 2  # the preview's form once (cached by file identity), and this fresh load's
    assert item.decode_count == 1 and item.digest == item.digest


def test_forms_are_decoded_on_first_use_and_kept(counted):
    decodes, _ = counted
    (item,) = load_inputs({"point": [EXAMPLES / "point-example.npy"]}, {"point": [{"num_points": 8192}, {}]})
    assert item.decode_count == 2 and item.decoded({"num_points": 8192}).data.shape[0] == 8192
    assert item.decoded().data.shape[0] != 8192 and item.decode_count == 2
    assert item.decoded({"num_points": item.decoded().data.shape[0]}) is item.decoded()  # a default limit is the default form
    assert item.features(("k",), lambda: torch.ones(1)) is item.features(("k",), lambda: torch.zeros(1))


def test_decoder_needs_name_each_distinct_form():
    base = tiny_base()
    point = random_expert(base, "p", "point", "decoupled", 1)
    object.__setattr__(point.config, "encoder", EncoderRef("point-bert", None, FEATURE_DIM))
    other = random_expert(base, "q", "point", "shared", 2)  # an unregistered kind: the default form
    point_bert = dict(encoders.encoder_spec("point-bert").input_limits)
    assert point_bert["num_points"] == 8192 and decoder_needs([point, other, point]) == {"point": [point_bert, {}]}


def test_an_input_given_as_data_has_one_form():
    item = ModalInput("image", torch.zeros(3, 4, 4), "x.png", ["downscaled"])
    assert item.decoded({"max_side": 2}) is item.decoded() and item.notes == ["downscaled"] and item.digest is None
