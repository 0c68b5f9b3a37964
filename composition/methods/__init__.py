"""Merge methods for the experts' text deltas, one small file each, registered by name.

Use :func:`merge_deltas` (the single entry point for dense deltas: validates, copies, checks
the result) or :func:`core_space.core_merge` (the low-rank core space, per layer, from the
experts' factors); :func:`list_methods` is the only list of methods (the UI reads it).
"""
from .registry import (
    GROUPS,
    SPACES,
    HyperParam,
    MergeMethod,
    MethodError,
    Renamed,
    RenamedParameterWarning,
    get_method,
    layer_seed,
    list_methods,
    merge_deltas,
    register_method,
    split_space,
)

# Importing a method module registers it; this order is the UI order (within each group).
from . import task_arithmetic, ties, dare  # noqa: F401  isort: skip
from . import weight_average, tsv_m, iso_c, iso_cts, wudi, optmerge, aswudi  # noqa: F401  isort: skip
from . import magnitude_prune, della, breadcrumbs, sce, factor_mean  # noqa: F401  isort: skip
from .core_space import core_merge

__all__ = [
    "GROUPS",
    "SPACES",
    "HyperParam",
    "MergeMethod",
    "MethodError",
    "Renamed",
    "RenamedParameterWarning",
    "core_merge",
    "get_method",
    "layer_seed",
    "list_methods",
    "merge_deltas",
    "register_method",
    "split_space",
]
