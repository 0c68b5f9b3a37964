"""Blind vote mode: two variants drawn at random answer as "A" and "B"; the user votes, then sees who was who.

A round is a conversation with two columns (``studio.chat``); its pair is drawn at its first
message from the variants the engine plans for that message's inputs. After every answer the
round is stored as a battle (``studio.votes``), so a vote, even one sent again after the server
restarted, finds it.
"""
from __future__ import annotations

import random
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from composition.config import CompositionConfig

from .chat import ChatSession, ChatTurn, Column, check_files, columns, parse_message, reply_stream, stop_flag
from .errors import StudioError
from .session import Studio
from .votes import CHOICES, Battle, VoteStore

BLIND = ("A", "B")


@dataclass
class ArenaRound:
    """One blind round: its conversation, the pair (None until the first message) and the vote."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    session: ChatSession = field(default_factory=ChatSession)
    pair: tuple[str, str] | None = None
    vote: str | None = None


def draw_pair(names: list[str], rng: random.Random) -> tuple[str, str]:
    if len(names) < 2:
        raise StudioError(f"blind votes need two variants, and these inputs give {len(names)} ({', '.join(names)}); "
                          "select more experts or add merge methods.")
    a, b = rng.sample(names, 2)
    return a, b


def send(studio: Studio, store: VoteStore, round_: ArenaRound, message, settings: CompositionConfig,
         stop: threading.Event | None = None) -> Iterator[list[Column]]:
    """The round's next turn, answered blind by its pair (drawn now at the first turn)."""
    if round_.vote is not None:
        raise StudioError("this round has its vote; start a new round to vote again.")
    text, files = parse_message(message)
    if not text:
        raise StudioError("the message is empty; type a question (files alone need a question about them).")
    check_files(studio, settings, files)
    session = round_.session
    session.turns.append(ChatTurn(text, files))
    try:
        if round_.pair is None:
            from .chat import turns_of

            present = {i.modality for t in turns_of(session, studio, settings) for i in t.inputs}
            # Any selected variant may be drawn, also an expert whose modality this round has no file of.
            candidates = settings.replace(experts_without_input=True).plan(studio.cm, present).names
            round_.pair = draw_pair(candidates, random.Random(round_.id))
            session.labels = dict(zip(round_.pair, BLIND))
        yield from reply_stream(studio, session, settings, variants=list(round_.pair),
                                stop=stop if stop is not None else stop_flag(session))
    except BaseException:
        session.turns.pop()
        for replies in session.replies.values():
            del replies[len(session.turns):]
        if not session.turns:
            round_.pair = None
        raise
    store.add_battle(battle_of(round_))


def battle_of(round_: ArenaRound) -> Battle:
    """The round as stored: its variants and coefficients, the conversation (file names, not paths), the digests."""
    from composition.inputs import file_digest

    a, b = round_.pair
    session = round_.session
    conversation, digests = [], []
    for k, turn in enumerate(session.turns):
        names = [Path(p).name for _, p in turn.files]
        digests += [file_digest(p) for _, p in turn.files]
        conversation.append({"role": "user", "content": turn.text, "files": names})
        conversation.append({"role": "assistant", "content": {label: session.replies[v][k].text
                                                              for v, label in zip(round_.pair, BLIND)
                                                              if k < len(session.replies.get(v, []))}})
    return Battle(round_.id, a, b, session.replies[a][-1].coefficients, session.replies[b][-1].coefficients,
                  conversation, digests)


def vote(store: VoteStore, round_: ArenaRound, choice: str) -> tuple[list[Column], str]:
    """Record the vote and reveal the names; returns the columns (now named) and what to tell the user."""
    if round_.pair is None or not round_.session.turns:
        raise StudioError("ask something first: the vote is about the two answers.")
    if choice not in CHOICES:
        raise StudioError(f"vote {choice!r} is not one of {', '.join(CHOICES)}.")
    battle, stored = store.vote(round_.id, choice)
    round_.vote = choice
    a, b = round_.pair
    round_.session.labels = {a: f"A: {a}", b: f"B: {b}"}
    said = "your vote was already counted" if not stored else f"you voted {choice}"
    return columns(round_.session), f"Thank you: {said}. **A** was **{a}**, **B** was **{b}**. Start a new round to vote again."


def new_round(studio: Studio, round_: ArenaRound | None) -> ArenaRound:
    if round_ is not None:
        studio.cm.kv_cache.forget(round_.session.id)
    return ArenaRound()


# --- the stateless API ---------------------------------------------------------------------------
def round_api(studio: Studio, store: VoteStore, message, settings: CompositionConfig) -> dict:
    """``/arena_round``: one message answered blind by a random pair; ``{"battle_id", "A", "B"}`` (the answers).
    Vote with ``vote_api``; the battle is stored first, so a vote after a server restart finds it."""
    round_ = ArenaRound()
    for _ in send(studio, store, round_, message, settings):
        pass
    a, b = round_.pair
    return {"battle_id": round_.id, "A": round_.session.replies[a][-1].text, "B": round_.session.replies[b][-1].text}


def vote_api(store: VoteStore, battle_id: str, choice: str) -> dict:
    """``/vote``: ``{"stored": False}`` for a vote sent again (the first one counts), and who A and B were."""
    battle, stored = store.vote(str(battle_id), choice)
    return {"stored": stored, "A": battle.variant_a, "B": battle.variant_b}


def leaderboard_rows(store: VoteStore) -> tuple[list[list], str]:
    """(rows: variant, points, 95 % interval, votes, wins, ties, losses; a line with the counts)."""
    from .votes import PRIVACY_NOTE, leaderboard

    ratings = leaderboard(store.votes())
    battles, votes = store.counts()
    rows = [[r.variant, round(r.points), f"{r.low:.0f}–{r.high:.0f}", r.votes, r.wins, r.ties, r.losses] for r in ratings]
    return rows, (f"{votes} vote(s) over {battles} round(s). Ratings are Bradley–Terry strengths as Elo-like points, "
                  f"with 95 % bootstrap intervals. {PRIVACY_NOTE}")
