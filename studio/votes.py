"""Blind votes between two variants, in an embedded SQLite database, and the leaderboard they make.

A battle is stored when its answers are shown (its two variants, their coefficients, the
conversation and the files' content digests), a vote when it is cast; the vote is keyed by
the battle, so a vote sent twice (a retry after a lost connection, a restarted server) is
stored once. WAL mode: a committed battle or vote survives the process being killed.

Nothing in the database identifies a person: no name, address, cookie or IP, only the
conversation's text and the digests of its files (not the files).

Ratings: Bradley–Terry strengths fitted by the MM algorithm (Hunter 2004), a tie counting half
a win each way, shown as Elo-like points (400·log10 strength + 1000), each with a 95 %
bootstrap interval over the votes (resampled battles).
"""
from __future__ import annotations

import json
import math
import os
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import StudioError

VOTES_ENV = "STUDIO_VOTES_DB"
CHOICES = ("A", "B", "tie", "both bad")
PRIVACY_NOTE = ("Votes are stored in a local database with the conversation's text and the digests of its files. "
                "Nothing in it identifies a person: no name, address, cookie or IP.")

SCHEMA = """
CREATE TABLE IF NOT EXISTS battles (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    variant_a TEXT NOT NULL,
    variant_b TEXT NOT NULL,
    coefficients_a TEXT NOT NULL,
    coefficients_b TEXT NOT NULL,
    conversation TEXT NOT NULL,
    file_digests TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS votes (
    battle_id TEXT PRIMARY KEY REFERENCES battles(id),
    created REAL NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie', 'both bad'))
);
"""


def default_path() -> Path:
    """``$STUDIO_VOTES_DB``, else ``.cache/votes.sqlite3`` of the workspace."""
    from composition.discovery import workspace_root

    return Path(os.environ.get(VOTES_ENV) or workspace_root() / ".cache" / "votes.sqlite3")


@dataclass(frozen=True)
class Battle:
    """Two variants' answers to one conversation, shown as "A" and "B"."""

    id: str
    variant_a: str
    variant_b: str
    coefficients_a: dict
    coefficients_b: dict
    conversation: list  # [{"role", "content"}], files by name
    file_digests: list[str]


class VoteStore:
    """The battles and votes of one database file; safe to share between the server's threads."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self._db()
        db.execute("PRAGMA journal_mode=WAL")  # outside a transaction: readers never block the writer
        db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:  # one connection per thread (sqlite3 connections are not shared across threads)
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("PRAGMA synchronous=NORMAL")  # with WAL: a commit survives the process being killed
            self._local.db = db
        return db

    def _connect(self) -> "_Transaction":
        return _Transaction(self._db())

    def add_battle(self, battle: Battle) -> None:
        """Store a battle, or its longer conversation after another turn (its variants never change)."""
        with self._connect() as db:
            db.execute("INSERT INTO battles VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                       "conversation = excluded.conversation, file_digests = excluded.file_digests",
                       (battle.id, time.time(), battle.variant_a, battle.variant_b, json.dumps(battle.coefficients_a),
                        json.dumps(battle.coefficients_b), json.dumps(battle.conversation), json.dumps(battle.file_digests)))

    def battle(self, battle_id: str) -> Battle:
        with self._connect() as db:
            row = db.execute("SELECT id, variant_a, variant_b, coefficients_a, coefficients_b, conversation, file_digests "
                             "FROM battles WHERE id = ?", (battle_id,)).fetchone()
        if row is None:
            raise StudioError(f"battle {battle_id!r} is unknown; start a new round.")
        return Battle(row[0], row[1], row[2], json.loads(row[3]), json.loads(row[4]), json.loads(row[5]), json.loads(row[6]))

    def vote(self, battle_id: str, choice: str) -> tuple[Battle, bool]:
        """Record ``choice`` for a battle; returns (the battle, whether this call stored it: False for a repeat).

        A repeated vote for the same battle keeps the first one.
        """
        if choice not in CHOICES:
            raise StudioError(f"vote {choice!r} is not one of {', '.join(CHOICES)}.")
        battle = self.battle(battle_id)
        with self._connect() as db:
            stored = db.execute("INSERT OR IGNORE INTO votes VALUES (?, ?, ?)", (battle_id, time.time(), choice)).rowcount
        return battle, stored == 1

    def votes(self) -> list[tuple[str, str, str]]:
        """Every vote as ``(variant A, variant B, choice)``."""
        with self._connect() as db:
            return db.execute("SELECT b.variant_a, b.variant_b, v.choice FROM votes v JOIN battles b ON b.id = v.battle_id "
                              "ORDER BY v.created").fetchall()

    def counts(self) -> tuple[int, int]:
        with self._connect() as db:
            return (db.execute("SELECT count(*) FROM battles").fetchone()[0],
                    db.execute("SELECT count(*) FROM votes").fetchone()[0])


class _Transaction:
    """``with`` on a connection in autocommit mode: one explicit transaction, committed at the end."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, tb) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


# --- ratings ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rating:
    variant: str
    points: float  # Elo-like: 400·log10(strength) + 1000, strengths with a geometric mean of 1
    low: float
    high: float
    votes: int
    wins: int
    ties: int
    losses: int


def bradley_terry(votes: list[tuple[str, str, str]], iterations: int = 200) -> dict[str, float]:
    """Strengths ``p`` with ``P(i beats j) = p_i / (p_i + p_j)``, fitted by the MM algorithm; a tie or "both
    bad" is half a win each way. A small prior (one tie with an average variant) keeps an unbeaten or a
    winless variant finite."""
    names = sorted({v for a, b, _ in votes for v in (a, b)})
    wins = {n: 0.5 for n in names}  # the prior's half win
    games: dict[tuple[str, str], float] = {}
    for a, b, choice in votes:
        score = {"A": 1.0, "B": 0.0}.get(choice, 0.5)
        wins[a] += score
        wins[b] += 1.0 - score
        key = (a, b) if a < b else (b, a)
        games[key] = games.get(key, 0.0) + 1.0
    strength = {n: 1.0 for n in names}
    for _ in range(iterations):
        new = {}
        for n in names:
            denominator = 1.0 / (strength[n] + 1.0)  # the prior: one game against a variant of strength 1
            for (a, b), count in games.items():
                if n in (a, b):
                    other = b if n == a else a
                    denominator += count / (strength[n] + strength[other])
            new[n] = wins[n] / denominator
        scale = math.exp(sum(math.log(v) for v in new.values()) / len(new))
        strength = {n: v / scale for n, v in new.items()}
    return strength


def leaderboard(votes: list[tuple[str, str, str]], samples: int = 200, seed: int = 0) -> list[Rating]:
    """Ratings with 95 % bootstrap intervals (votes resampled with replacement), best first."""
    if not votes:
        return []
    points = lambda strengths: {n: 400 * math.log10(v) + 1000 for n, v in strengths.items()}  # noqa: E731
    center = points(bradley_terry(votes))
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {n: [] for n in center}
    for _ in range(samples):
        sample = [votes[rng.randrange(len(votes))] for _ in votes]
        got = points(bradley_terry(sample, iterations=100))
        for n in center:
            if n in got:
                draws[n].append(got[n])
    ratings = []
    for n, value in center.items():
        ordered = sorted(draws[n]) or [value]
        low, high = ordered[int(0.025 * (len(ordered) - 1))], ordered[int(math.ceil(0.975 * (len(ordered) - 1)))]
        mine = [(a, b, c) for a, b, c in votes if n in (a, b)]
        wins = sum(1 for a, b, c in mine if (c == "A" and a == n) or (c == "B" and b == n))
        ties = sum(1 for _, _, c in mine if c in ("tie", "both bad"))
        ratings.append(Rating(n, value, low, high, len(mine), wins, ties, len(mine) - wins - ties))
    return sorted(ratings, key=lambda r: -r.points)
