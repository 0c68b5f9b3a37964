"""Conversations' KV caches, kept within a memory budget so a turn prefills only its new tokens.

An entry is one row's cache after a turn: the keys of its positions (token ids, modality-block
keys, the answer's own token ids), the signature of what computed it (the variant and every
coefficient it applies) and the batch-of-one cache itself. A later row continues the longest
entry whose signature equals its own and whose keys are a prefix of its keys, so a cache is
used only where a full prefill would compute the same thing.

Entries belong to a session (a conversation). When the memory goes over the budget, the least
recently used session's entries go, all together; a session that comes back is prefilled again
from its tokens, with the same answer.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class CachedPrefix:
    """A stored cache: ``cache`` holds the first ``length`` positions of a row."""

    cache: object
    length: int


@dataclass
class _Entry:
    signature: tuple
    keys: tuple
    cache: object
    nbytes: int


@dataclass
class CacheStats:
    """What the store did: lookups that found a prefix, tokens not prefilled again, sessions evicted."""

    hits: int = 0
    misses: int = 0
    reused_tokens: int = 0
    evicted_sessions: int = 0


def cache_bytes(cache) -> int:
    return sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
               for layer in cache.layers)


class KVCacheStore:
    """Entries by session, least recently used session first out when over ``budget_bytes``."""

    def __init__(self, budget_bytes: int) -> None:
        self._sessions: OrderedDict[str, dict[tuple, _Entry]] = OrderedDict()  # session -> {signature: entry}
        self._lock = threading.Lock()
        self.stats = CacheStats()
        self.budget_bytes = budget_bytes

    @property
    def budget_bytes(self) -> int:
        return self._budget

    @budget_bytes.setter
    def budget_bytes(self, value: int) -> None:
        """A new budget applies at once: sessions over it go, least recently used first."""
        with self._lock:
            self._budget = int(value)
            self._trim()

    def _trim(self) -> None:
        while self.nbytes > self._budget and self._sessions:
            self._sessions.popitem(last=False)
            self.stats.evicted_sessions += 1

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for entries in self._sessions.values() for e in entries.values())

    def lookup(self, signature: tuple, keys) -> CachedPrefix | None:
        """The longest stored prefix of ``keys`` computed with ``signature`` (at most all but the last key,
        so the row still has a position to prefill); None when there is none."""
        keys = tuple(keys)
        best, best_session, length = None, None, 0
        with self._lock:
            for session, entries in self._sessions.items():
                for entry in entries.values():
                    if entry.signature == signature:
                        shared = best_length(entry, keys)
                        if shared > length:
                            best, best_session, length = entry, session, shared
            if best is None:
                self.stats.misses += 1
                return None
            self._sessions.move_to_end(best_session)
            self.stats.hits += 1
            self.stats.reused_tokens += length
        if length < len(best.keys):  # the stored row went further than this one shares: only its common part
            from .generate import row_cache

            return CachedPrefix(row_cache(best.cache, 0, 0, length), length)
        return CachedPrefix(best.cache, length)

    def store(self, signature: tuple, keys: tuple, cache, session: str) -> None:
        """Keep ``cache`` (the positions named by ``keys``) for ``session``; it replaces the session's earlier
        entry of the same signature (a prefix of this one, in a conversation)."""
        entry = _Entry(signature, tuple(keys), cache, cache_bytes(cache))
        with self._lock:
            entries = self._sessions.setdefault(session, {})
            entries[signature] = entry
            self._sessions.move_to_end(session)
            self._trim()  # a session alone over the budget is not kept either

    def forget(self, session: str | None = None) -> None:
        """Drop one session's entries (a cleared conversation), or every entry."""
        with self._lock:
            if session is None:
                self._sessions.clear()
            else:
                self._sessions.pop(session, None)


def best_length(entry: _Entry, keys: tuple) -> int:
    """How much of ``keys`` an entry can serve: its shared prefix, leaving the row's last key to prefill."""
    n = min(len(entry.keys), len(keys) - 1)
    same = 0
    while same < n and entry.keys[same] == keys[same]:
        same += 1
    return same
