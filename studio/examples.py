"""Example rows for the Compare tab from examples/manifest.json: each modality alone,
mixed combinations built from the single examples, and the MCUB-synth items."""
from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

from modalities import MODALITY_NAMES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MIXED_QUESTION = "Describe each input briefly."


def example_rows(manifest: Path = EXAMPLES / "manifest.json") -> list[list]:
    """``[question, image, audio, video, point]`` rows (None where an input is absent)."""
    if not manifest.is_file():
        return []
    data = json.loads(manifest.read_text())
    root = manifest.parent
    singles: dict[str, str] = {}
    single_rows, other_rows = [], []
    for ex in data.get("examples", []):
        files = {m: str(root / p) for m, p in ex.get("files", {}).items()}
        if not all(Path(p).is_file() for p in files.values()):
            continue  # a manifest entry whose files are missing is not offered
        row = [ex["question"], *[files.get(m) for m in MODALITY_NAMES]]
        if ex.get("kind") == "single" and len(files) == 1:
            singles.update(files)
            single_rows.append(row)
        else:
            other_rows.append(row)
    # Mixed combinations of the single examples: a few pairs, then all of them together.
    present = [m for m in MODALITY_NAMES if m in singles]
    combos = list(combinations(present, 2))[:3] + ([tuple(present)] if len(present) > 2 else [])
    mixed = [[MIXED_QUESTION, *[singles[m] if m in combo else None for m in MODALITY_NAMES]] for combo in combos]
    return single_rows + mixed + other_rows
