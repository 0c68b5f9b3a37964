"""Keep a long-running server's memory flat under many users.

glibc gives each thread that allocates its own malloc arena (up to 8 × cores). The app
answers every request on a worker thread of the server's pool, and a thread's freed
tensors stay in its arena instead of going back to the system, so the resident size
creeps up with each new wave of users although nothing leaks. Measured with
``python tests/load_test.py --clients 8 --requests-per-client 2 --rounds 6``: default
arenas, RSS after each round 2045 → 2292 → 2367 → 2619 → 2830 → 2940 MB; capped at two
by app.py, 1699 → 1807 → 1809 → 1810 → 1819 → 1792 MB (same answers).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h
DEFAULT_ARENAS = 2


def limit_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's malloc arenas for the threads created from now on; True when applied.

    A no-op off glibc (macOS, Windows, musl) and when the user set ``MALLOC_ARENA_MAX``
    themselves (glibc already read it at start-up, and their choice wins).
    """
    if not isinstance(arenas, int) or isinstance(arenas, bool) or arenas < 1:
        raise ValueError(f"arenas={arenas!r} must be a positive integer (2 suits a server with a small worker pool).")
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
