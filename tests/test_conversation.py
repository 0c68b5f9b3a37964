"""Conversations in the engine: multi-turn prompts, each variant's own history, KV caches reused exactly."""
from __future__ import annotations

import pytest

from composition.composer import ComposedModel, RowRequest, Turn
from composition.errors import CompositionError
from composition.generate import GenerationConfig
from composition.inputs import ModalInput
from composition.prompt import build_prompt_row
from composition.random_models import features_as_data, random_expert, random_features, tiny_base
from composition.templates import VICUNA_V1

GEN = GenerationConfig(max_new_tokens=6)


@pytest.fixture(scope="module")
def cm():
    base = tiny_base()
    experts = [random_expert(base, m, m, "decoupled", seed=60 + i) for i, m in enumerate(("image", "audio", "point"))]
    experts += [random_expert(base, f"{m}-shared", m, "shared", seed=70 + i) for i, m in enumerate(("image", "audio"))]
    return ComposedModel(base, experts, feature_fn=features_as_data)


IMAGE = ModalInput("image", random_features(3, 1), "a.png")
AUDIO = ModalInput("audio", random_features(4, 2), "b.wav")
TURNS = [Turn("What shape is it?", (IMAGE,)), Turn("What colour?"), Turn("Is there anything else?", (AUDIO,))]


def converse(cm, turns, session=None, budget=None):
    """Every turn in order, each variant after its own answers; returns {variant: [answer ids per turn]}."""
    if budget is not None:
        cm.kv_cache.budget_bytes = budget
    answers: dict[str, list[list[int]]] = {}
    reused: dict[str, list[int]] = {}
    for t in range(1, len(turns) + 1):
        plan = cm.plan({i.modality for turn in turns[:t] for i in turn.inputs})
        for a in cm.chat(turns[:t], plan, GEN, answers, session=session):
            answers.setdefault(a.variant.name, []).extend([*a.earlier, a.token_ids])
            reused.setdefault(a.variant.name, []).append(a.reused_tokens)
    return answers, reused


def test_vicuna_v1_renders_the_turns_as_fastchat_does():
    pieces = VICUNA_V1.conversation_pieces(["image: <image>\nWhat is it?", "And its colour?"])
    assert pieces[0] == VICUNA_V1.format_prompt("image: <image>\nWhat is it?")
    assert pieces[1] == "</s>USER: And its colour? ASSISTANT:"  # "ASSISTANT: " + answer + "</s>" between turns
    assert "".join([pieces[0], " A cat.", pieces[1]]).endswith("ASSISTANT: A cat.</s>USER: And its colour? ASSISTANT:")


def test_modality_blocks_keep_their_place_and_route_in_later_turns(cm):
    """The routes of a three-turn conversation equal those of the same text given as one prompt."""
    tokenizer = cm.base.tokenizer
    answers = [tokenizer(" A red ball.", add_special_tokens=False)["input_ids"], tokenizer(" Red.", add_special_tokens=False)["input_ids"]]
    request = RowRequest(TURNS[2].text, TURNS[2].inputs, history=tuple(TURNS[:2]), answers={"DAMC": answers})
    rv = cm.plan({"image", "audio"}, ["DAMC"]).variants[0]
    ((row, notes),) = cm._request_rows(request, [rv])
    pieces = cm.base.template.conversation_pieces(["image: <image>\nWhat shape is it?", "What colour?",
                                                   "audio: <audio>\nIs there anything else?"])
    one_prompt = pieces[0] + " A red ball." + pieces[1] + " Red." + pieces[2]
    blocks = cm.encode_inputs([rv], [IMAGE, AUDIO])
    single = build_prompt_row(one_prompt, {"image": [blocks[("image", 0)]], "audio": [blocks[("audio", 1)]]}, tokenizer,
                              cm.model.get_input_embeddings())
    assert row.routes == single.routes and notes == []
    assert row.routes.index("image") < row.routes.index("audio")  # the image block stays in turn 1, audio in turn 3
    assert (row.embeds - single.embeds).abs().max() == 0


def test_reusing_the_kv_cache_gives_the_same_answers_token_for_token(cm):
    with_reuse, reused = converse(cm, TURNS, session="reuse")
    without, none = converse(cm, TURNS)
    assert with_reuse == without
    assert all(n == 0 for counts in none.values() for n in counts)
    assert reused["expert:image"][1] > 0 and reused["expert:image"][2] > 0  # turns 2 and 3 continued its cache
    assert reused["DAMC"][2] == 0  # audio joined: DAMC's λ changed (1/K, K = 2), so its history is computed again
    assert len(with_reuse["expert:audio"]) == 3  # it joined in turn 3 and answered the turns it missed first


def test_an_evicted_conversation_comes_back_with_the_same_answers(cm):
    reference, _ = converse(cm, TURNS, session="a")
    evicting, reused = converse(cm, TURNS, session="b", budget=1)  # nothing fits: every turn is prefilled again
    assert evicting == reference and cm.kv_cache.nbytes == 0
    assert all(n == 0 for counts in reused.values() for n in counts) and cm.kv_cache.stats.evicted_sessions > 0
    cm.kv_cache.budget_bytes = 1 << 30


def test_each_variant_keeps_its_own_history(cm):
    answers, _ = converse(cm, TURNS[:2], session="own")
    assert answers["DAMC"] == answers["expert:image"]  # one expert merged: the same model
    assert answers["NaiveMC"] != answers["DAMC"]
    request = RowRequest("next?", history=tuple(TURNS[:2]), answers={"DAMC": answers["DAMC"][:1]})
    with pytest.raises(CompositionError, match="variant 'DAMC' has 1 earlier answer"):
        cm._request_rows(request, cm.plan({"image"}, ["DAMC"]).variants)


def test_a_conversation_too_long_for_the_context_drops_its_oldest_turns_and_says_so(cm):
    long = "describe it again, " * 5
    turns = [Turn(long, (IMAGE,))] + [Turn(long) for _ in range(5)]
    answers = {"expert:image": [[5] * 20 for _ in range(5)]}
    plan = cm.plan({"image"}, ["expert:image"])
    (answer,) = cm.chat(turns, plan, GEN, answers)
    assert answer.prompt_tokens + GEN.max_new_tokens <= cm.context_window
    assert answer.notes and answer.notes[0].startswith("turns 1–") and "context of 512 tokens" in answer.notes[0]
    with pytest.raises(CompositionError, match="the last turn alone takes .* over the base's context of 512"):
        cm.chat([Turn(long * 8)], cm.plan(set(), ["expert:image"]), GEN)


def test_a_plan_for_other_inputs_is_refused(cm):
    with pytest.raises(CompositionError, match="the plan was made for inputs \\['image'\\] but the conversation has"):
        cm.chat(TURNS, cm.plan({"image"}), GEN)
