"""Merge methods for the experts' text deltas, one small file each, registered by name.

Use :func:`merge_deltas` (the single entry point: validates, copies, checks the result);
:func:`list_methods` is the only list of methods (the UI reads it).
"""
from .registry import (
    HyperParam,
    MergeMethod,
    MethodError,
    get_method,
    list_methods,
    merge_deltas,
    register_method,
)

# Importing a method module registers it; this order is the UI order.
from . import task_arithmetic, ties, dare  # noqa: E402,F401  isort: skip

__all__ = [
    "HyperParam",
    "MergeMethod",
    "MethodError",
    "get_method",
    "list_methods",
    "merge_deltas",
    "register_method",
]
