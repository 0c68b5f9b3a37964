"""Predictions as VLMEvalKit's multiple-choice TSV, one file per variant, which its MCQ scorer reads.

VLMEvalKit's multiple-choice data sets are TSV files with the columns ``index``, ``question``,
``A``..``D``, ``answer`` (the gold letter) and ``category``; a model's result file is the same rows
with its ``prediction`` column added (``{model}_{dataset}.tsv``, scored by its MCQ evaluation, which
extracts the option from ``prediction``). MCUB questions carry their options inline
("What do these inputs have in common? A. ball B. cone C. diamond D. ring ..."): they are split
into the question and the four option columns here. Media stay where they are: the rows name each
item's input files (``image_path`` etc.) instead of embedding them.

    write_vlmevalkit_tsv(result, items, "out/")   # out/DAMC_MCUB.tsv, out/expert-image_MCUB.tsv, ...
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Sequence

from ..errors import CompositionError
from .predictions import variant_slug
from .scoring import LETTERS, score_answer

COLUMNS = ("index", "question", "A", "B", "C", "D", "answer", "prediction", "category")
_OPTION = re.compile(r"(?:^|\s)([A-D])[.)]\s*")


def split_options(question: str) -> tuple[str, dict[str, str]]:
    """("What do these inputs have in common?", {"A": "ball", ...}) from a question with inline or one-per-line options.

    The text after option D up to a sentence that is no option ("Answer with the option's letter.") is dropped
    from D. Raises when the four options A-D are not all there, in order.
    """
    marks = [(m.group(1), m.start(1), m.end()) for m in _OPTION.finditer(question)]
    chosen, want = [], 0
    for letter, start, end in marks:  # the first A, then the first B after it, ...
        if want < len(LETTERS) and letter == LETTERS[want]:
            chosen.append((letter, start, end))
            want += 1
    if want < len(LETTERS):
        raise CompositionError(f"the question {question[:60]!r} does not list the options A-D; VLMEvalKit's "
                               "multiple-choice TSV needs them.")
    options = {}
    for k, (letter, _, end) in enumerate(chosen):
        stop = chosen[k + 1][1] if k + 1 < len(chosen) else len(question)
        options[letter] = question[end:stop].strip()
    tail = re.split(r"(?<=\w)[.?!]?\s+(?=(?:Answer|Please|Choose|Respond|Select)\b)", options["D"], maxsplit=1)
    options["D"] = tail[0].strip().rstrip(".")
    return question[: chosen[0][1]].strip(), options


def vlmevalkit_rows(result, items: Sequence, variant: str) -> list[dict]:
    """The rows of one variant: every item's question split into its options, the gold letter and the answer."""
    by_id = {item.id: item for item in items}
    rows = []
    for p in result.predictions:
        if p.variant != variant:
            continue
        item = by_id.get(p.item_id)
        if item is None:
            raise CompositionError(f"prediction for item {p.item_id!r}, which is not among the items given.")
        question, options = split_options(item.question)
        gold = score_answer(item.answer) or item.answer
        row = {"index": len(rows), "question": question, **options, "answer": gold, "prediction": p.answer,
               "category": item.subset}
        for modality, path in item.inputs:
            row.setdefault(f"{modality}_path", str(path))
        rows.append(row)
    return rows


def write_vlmevalkit_tsv(result, items: Sequence, folder: str | Path, dataset: str = "MCUB") -> dict[str, Path]:
    """One ``<variant>_<dataset>.tsv`` per variant in ``folder``, written whole (a temporary file moved into place)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for variant in result.variants:
        rows = vlmevalkit_rows(result, items, variant)
        extra = sorted({k for r in rows for k in r} - set(COLUMNS))
        path = folder / f"{variant_slug(variant)}_{dataset}.tsv"
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with tmp.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*COLUMNS, *extra], delimiter="\t", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        written[variant] = path
    return written


def read_tsv(path: str | Path) -> list[dict]:
    """The rows of a TSV written here (for tests and tools)."""
    with Path(path).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))
