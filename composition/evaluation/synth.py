"""Where MCUB-synth sets live: the one definition of their folder and file names.

``training.mcub_synth`` builds them with these names (it imports this module); the runner
finds built sets here (the engine and this package never import training) and names the
build command when a set is missing.
"""
from __future__ import annotations

from pathlib import Path

from modalities.checks import check_int

from ..discovery import workspace_root
from ..errors import CompositionError
from .files import McubFormatError, load_mcub

SYNTH_KINDS = ("synth-4", "synth-3")
# synth-3 subsets, in the order training.mcub_synth builds them (it imports this tuple).
SYNTH3_SUBSETS: tuple[tuple[str, ...], ...] = (
    ("image", "audio", "video"), ("image", "audio", "point"), ("image", "video", "point"), ("audio", "video", "point"),
)
ALL_FOUR = "image+audio+video+point"


class SynthSetMissing(McubFormatError):
    """An MCUB-synth set is not built (or is incomplete); the message names the command that builds it."""


def synth_cache_dir() -> Path:
    """Where built MCUB-synth sets are kept: ``.cache/mcub-synth`` of the workspace (git-ignored)."""
    return workspace_root() / ".cache" / "mcub-synth"


def synth_set_folder(seed: int, n_items: int, cache_dir: str | Path | None = None) -> Path:
    """``<cache>/seed<seed>-n<n_items>``: one folder per (seed, size), files under ``files/``."""
    return Path(cache_dir or synth_cache_dir()) / f"seed{seed}-n{n_items}"


def synth_file_name(kind: str, subset: tuple[str, ...] | None = None) -> str:
    """``mcub-synth4.json``; ``mcub-synth3-<initials>.json`` for one synth-3 subset, ``mcub-synth3.json`` for all mixed."""
    if kind not in SYNTH_KINDS:
        raise CompositionError(f"unknown MCUB-synth set {kind!r}; expected one of {SYNTH_KINDS}.")
    if kind == "synth-4":
        return "mcub-synth4.json"
    return "mcub-synth3.json" if subset is None else f"mcub-synth3-{''.join(m[0] for m in subset)}.json"


def synth_file_names(kind: str) -> dict[str, str]:
    """``{subset: file name}`` of a set as the runner reads it: synth-4 whole, synth-3 per subset."""
    if kind == "synth-3":
        return {"+".join(s): synth_file_name(kind, s) for s in SYNTH3_SUBSETS}
    return {ALL_FOUR: synth_file_name(kind)}


def synth_build_command(kind: str, seed: int, n_items: int, cache_dir: str | Path | None = None) -> str:
    """The exact command that builds the set where ``synth_sets`` looks for it."""
    folder = synth_set_folder(seed, n_items, cache_dir)
    try:
        shown = folder.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = folder
    subset = " --subset all" if kind == "synth-3" else ""
    return f"python -m training.mcub_synth --kind {kind}{subset} --seed {seed} --n-items {n_items} --out {shown}"


def synth_sets(kind: str, seed: int = 0, n_items: int = 200, cache_dir: str | Path | None = None, *,
               at_least: bool = False) -> dict[str, Path]:
    """The built MCUB-synth JSON files of ``kind``: ``{"image+audio+video+point": path}`` for
    synth-4, one entry per 3-modality subset for synth-3 (the paper reports MCUB-3 per subset).

    Nothing is built here (composition does not import training): a set that is missing or
    incomplete raises ``SynthSetMissing`` naming the ``python -m training.mcub_synth`` command
    that builds it. ``at_least``: any complete set of this seed with ``n_items`` or more items
    will do (the smallest), for callers that take its first items (the app, the benchmark).
    """
    n_items = check_int(n_items, "n_items", 1, error=CompositionError)
    seed = check_int(seed, "seed", 0, error=CompositionError)
    sizes = [n_items]
    if at_least:
        root = Path(cache_dir or synth_cache_dir())
        built = sorted(int(p.name.rsplit("-n", 1)[1]) for p in root.glob(f"seed{seed}-n*") if p.name.rsplit("-n", 1)[1].isdigit())
        sizes = [n for n in built if n >= n_items] + sizes
    problem = ""
    for size in sizes:
        folder = synth_set_folder(seed, size, cache_dir)
        paths = {subset: folder / name for subset, name in synth_file_names(kind).items()}
        states = [_synth_state(path, size) for path in paths.values()]
        if not any(states):
            return paths
        problem = problem or next(s for s in states if s)
    raise SynthSetMissing(f"MCUB-{kind} (seed {seed}, {n_items} items) {problem}; build it with: "
                          f"{synth_build_command(kind, seed, n_items, cache_dir)}")


def _synth_state(path: Path, n_items: int) -> str:
    """"" when the set is complete, else what is wrong with it."""
    if not path.is_file():
        return "is not built"
    try:
        n = len(load_mcub(path))
    except McubFormatError:
        return "is incomplete (a build was interrupted?)"
    return "" if n == n_items else f"has {n} items, not {n_items}"
