"""The malloc-arena cap that keeps the server's memory flat under many users (studio/memory.py).

Its effect is measured by the load test (``--rounds``), not here: these check the switch.
"""
from __future__ import annotations

import ctypes.util
import sys

import pytest

from studio.memory import limit_malloc_arenas


@pytest.mark.parametrize("bad", [0, -1, 2.5, "2", True])
def test_a_bad_arena_count_is_refused_with_what_to_pass(bad):
    with pytest.raises(ValueError, match="positive integer"):
        limit_malloc_arenas(bad)


def test_the_users_own_malloc_arena_max_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                    reason="glibc's mallopt only exists on Linux")
def test_on_linux_the_cap_is_applied(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is True
