"""The Chat and Blind vote tabs' handlers as plain functions, on tiny random models (no UI, no server)."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from composition.config import CompositionConfig
from composition.errors import CompositionError
from studio import arena, chat
from studio.errors import StudioError
from studio.votes import VoteStore, bradley_terry, leaderboard
from tests.test_studio_handlers import CHEETAH, MEDIA, make_studio

AUDIO = str(MEDIA / "audio" / "cantina.wav")
POINT = str(Path(__file__).resolve().parent.parent / "examples" / "point-example.npy")
SHORT = dict(max_new_tokens=4)


def settings_for(studio, **changes) -> CompositionConfig:
    return CompositionConfig(**{"experts": list(studio.cm.experts), **SHORT, **changes})


def run(stream):
    pages = list(stream)
    assert pages, "the stream yielded nothing"
    return pages


def texts(column) -> list[tuple[str, object]]:
    return [(m["role"], m["content"]) for m in column.messages]


def test_a_three_turn_chat_keeps_each_columns_history_and_files_in_turns_1_and_3():
    studio = make_studio(kinds=("decoupled", "shared"))
    session = chat.ChatSession()
    settings = settings_for(studio)
    run(chat.send(studio, session, {"text": "What shape is it?", "files": [CHEETAH]}, settings))
    assert session.order == ["NaiveMC", "DAMC", "expert:image", "expert:image-shared"]
    run(chat.send(studio, session, "What colour?", settings))
    last = run(chat.send(studio, session, {"text": "And the sound?", "files": [AUDIO]}, settings))[-1]
    assert session.order == ["NaiveMC", "DAMC", "expert:image", "expert:image-shared", "expert:audio", "expert:audio-shared"]
    damc = next(c for c in last if c.label == "DAMC")
    roles = [r for r, _ in texts(damc)]
    assert roles == ["user", "user", "assistant", "user", "assistant", "user", "user", "assistant"]  # file, text, answer ...
    files = [c for r, c in texts(damc) if isinstance(c, dict)]
    assert [f["modality"] for f in files] == ["image", "audio"] and files[0]["name"] == "cheetah.jpg"
    footers = [c for r, c in texts(damc) if r == "assistant"]
    assert "λ image 1.00" in footers[0] and "λ image 0.50, audio 0.50" in footers[2]  # the audio turn merged both
    assert all(len(session.replies[n]) == 3 for n in session.order)  # the audio experts answered the turns they missed
    assert sum(c.visible for c in last) == 6 and len(last) == chat.MAX_COLUMNS


def test_a_changed_coefficient_applies_from_the_next_turn_and_shows_there():
    studio = make_studio()
    session = chat.ChatSession()
    run(chat.send(studio, session, {"text": "What is it?", "files": [CHEETAH, AUDIO]}, settings_for(studio)))
    moved = settings_for(studio, lambdas={"image": 0.8})
    last = run(chat.send(studio, session, "And then?", moved))[-1]
    damc = [c for r, c in texts(next(c for c in last if c.label == "DAMC")) if r == "assistant"]
    assert "λ image 0.50, audio 0.50" in damc[0] and "λ image 0.80, audio 0.50" in damc[1]


def test_regenerate_undo_clear_and_stop():
    studio = make_studio()
    session = chat.ChatSession()
    settings = settings_for(studio)
    run(chat.send(studio, session, {"text": "What is it?", "files": [CHEETAH]}, settings))
    run(chat.send(studio, session, "Sure?", settings))
    before = {n: [r.text for r in replies] for n, replies in session.replies.items()}
    run(chat.regenerate(studio, session, settings))
    assert {n: [r.text for r in replies] for n, replies in session.replies.items()} == before  # greedy: the same
    cols, message = chat.undo(session)
    assert message == {"text": "Sure?", "files": []} and len(session.turns) == 1
    assert all(len(replies) == 1 for replies in session.replies.values())
    stopped = threading.Event()
    stopped.set()  # the Stop button pressed before the first token: the turn keeps what was said, marked as such
    run(chat.send(studio, session, "Again?", settings_for(studio, max_new_tokens=30), stop=stopped))
    assert all("cut short" in session.replies[n][-1].notes[-1] for n in session.order)
    assert len(session.replies["DAMC"][-1].token_ids) <= 1
    fresh = chat.clear(studio, session)
    assert fresh.id != session.id and not fresh.turns


def test_bad_messages_are_refused_and_nothing_is_half_kept():
    studio = make_studio(modalities=("image",))
    session = chat.ChatSession()
    with pytest.raises(StudioError, match="cantina.wav is an audio file, and no selected expert reads audio"):
        run(chat.send(studio, session, {"text": "hi", "files": [AUDIO]}, settings_for(studio)))
    with pytest.raises(StudioError, match="the message is empty"):
        run(chat.send(studio, session, {"text": "  ", "files": [CHEETAH]}, settings_for(studio)))
    with pytest.raises(CompositionError, match="no expert is selected"):
        run(chat.send(studio, session, "hi", settings_for(studio, experts=[])))
    assert session.turns == [] and session.replies == {}


def test_the_stateless_api_takes_the_history_and_refuses_files_from_elsewhere(tmp_path):
    studio = make_studio()
    settings = settings_for(studio)
    first = chat.chat_api(studio, [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, CHEETAH]}], settings)
    names = [v["name"] for v in first["variants"]]
    assert names == ["DAMC", "expert:image"] and first["turns"] == 1
    history = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, CHEETAH]},
               {"role": "assistant", "content": {v["name"]: v["answer"] for v in first["variants"]}},
               {"role": "user", "content": "And its colour?"}]
    second = chat.chat_api(studio, history, settings)
    assert [v["name"] for v in second["variants"]] == names and second["turns"] == 2
    with pytest.raises(StudioError, match="is not a file uploaded to this server"):
        chat.chat_api(studio, history, settings, allowed=[tmp_path])
    with pytest.raises(StudioError, match="the last message must be the user's turn"):
        chat.chat_api(studio, history[:2], settings)


def test_blind_rounds_are_stored_voted_once_and_revealed(tmp_path):
    studio = make_studio(kinds=("decoupled", "shared"))
    store = VoteStore(tmp_path / "votes.sqlite3")
    round_ = arena.ArenaRound()
    last = run(arena.send(studio, store, round_, {"text": "What is it?", "files": [CHEETAH]}, settings_for(studio)))[-1]
    assert [c.label for c in last if c.visible] == ["A", "B"] and len(set(round_.pair)) == 2
    assert store.counts() == (1, 0)
    cols, message = arena.vote(store, round_, "A")
    a, b = round_.pair
    assert [c.label for c in cols if c.visible] == [f"A: {a}", f"B: {b}"] and f"**A** was **{a}**" in message
    battle, stored = store.vote(round_.id, "B")  # sent again (a retry): the first vote stays
    assert not stored and store.votes() == [(a, b, "A")]
    assert battle.conversation[0] == {"role": "user", "content": "What is it?", "files": ["cheetah.jpg"]}
    assert len(battle.file_digests) == 1 and len(battle.file_digests[0]) == 64
    with pytest.raises(StudioError, match="this round has its vote"):
        run(arena.send(studio, store, round_, "more?", settings_for(studio)))
    reopened = VoteStore(tmp_path / "votes.sqlite3")  # another process, or the server after a restart
    assert reopened.votes() == [(a, b, "A")]


def test_bradley_terry_orders_by_wins_and_handles_ties_and_sweeps():
    votes = [("x", "y", "A")] * 8 + [("x", "y", "B")] * 2 + [("y", "z", "A")] * 6 + [("y", "z", "tie")] * 2
    strengths = bradley_terry(votes)
    assert strengths["x"] > strengths["y"] > strengths["z"]
    assert bradley_terry([("p", "q", "A")] * 5)["q"] > 0  # an all-losing variant stays finite (the prior)
    board = leaderboard(votes, samples=50)
    assert [r.variant for r in board] == ["x", "y", "z"]
    x = board[0]
    assert (x.votes, x.wins, x.ties, x.losses) == (10, 8, 0, 2) and x.low <= x.points <= x.high
    assert leaderboard([]) == []
