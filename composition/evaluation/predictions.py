"""Predictions files and resuming a stopped run.

A run writes ``<stem>-predictions.jsonl`` (one line per item and variant) next to the data,
appending each finished chunk so a killed run loses at most one chunk, and
``<stem>-predictions.jsonl.settings.json`` with what makes two runs' answers comparable.
``read_previous`` gives a resumed run the answers already written, and refuses a file
written with other settings, experts or base; several processes each append to their own
``.rank<N>.part`` file, which the main process joins.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..errors import CompositionError
from ..schedules import plain

# How the work was split, not what was answered: a resumed run may change these.
SPLIT_SETTINGS = ("processes", "batch_items")


def variant_slug(name: str) -> str:
    """A variant name as a file name (``expert:image`` -> ``expert-image``)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def write_lines(path: str | Path, rows: Iterable[dict]) -> Path:
    """JSON lines written to a temporary file, then moved into place: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
    return path


def run_settings(*, experts: Mapping[str, str], base_sha256: str | None, prompt: str, config, template: str, scoring: str,
                 batch_items: int, variants: Sequence[str], coefficients, method_params: Sequence[str], processes: int,
                 labels: Mapping[str, str] | None = None, merge_all_experts: bool = False) -> dict:
    """What makes two runs' answers comparable (``experts``: name -> folder digest); ``--resume`` compares it."""
    settings = {"experts": dict(experts), "base": base_sha256, "prompt": prompt, "max_new_tokens": config.max_new_tokens,
                "temperature": config.temperature, "template": template, "scoring": scoring, "batch_items": batch_items,
                "variants": list(variants), "lambdas": {k: plain(v) for k, v in coefficients.lambdas.items()},
                "mus": {k: plain(v) for k, v in coefficients.mus.items()}, "method_params": list(method_params),
                "processes": processes}
    if labels:
        settings["labels"] = dict(labels)
    if merge_all_experts:  # only when set, so the files of runs before this option still resume
        settings["merge_all_experts"] = True
    scale = getattr(coefficients, "lambda_scale", 1.0)
    if scale != 1.0:  # the same: auto λ = scale/K, recorded only when it is not the paper's 1/K
        settings["lambda_scale"] = scale
    return settings


def output_paths(data: Path, stem: str, *, predictions: str | Path | None = None, skip: int = 0,
                 limit: int | None = None) -> tuple[Path, Path]:
    """(predictions .jsonl, the paper-format folder): next to the data, else in the working directory.

    A ``skip`` run extends an earlier run: its file names its item range, so the earlier predictions stay.
    """
    if predictions:
        pred = Path(predictions)
    else:
        folder = Path(data).resolve().parent
        folder = folder if os.access(folder, os.W_OK) else Path.cwd()
        span = f"-items{skip + 1}-{limit or 'end'}" if skip else ""
        pred = folder / f"{stem}{span}-predictions.jsonl"
    return pred, pred.with_name(pred.name.removesuffix(".jsonl").removesuffix("-predictions") + "-paper")


def settings_path(pred: Path) -> Path:
    return pred.with_name(pred.name + ".settings.json")


def part_path(pred: Path, rank: int) -> Path:
    """The file process ``rank`` of a multi-process run appends to."""
    return pred.with_name(f"{pred.name}.rank{rank}.part")


def part_paths(pred: Path) -> list[Path]:
    return sorted(pred.parent.glob(f"{pred.name}.rank*.part"))


def write_settings(pred: Path, settings: dict) -> None:
    settings_path(pred).write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")


def read_previous(pred: Path, settings: dict, ids: set[str]) -> dict[tuple[str, str], str]:
    """Answers of a stopped run with the same settings: ``{(id, variant): text}`` (a torn last line is skipped)."""
    saved_path = settings_path(pred)
    files = [p for p in [pred, *part_paths(pred)] if p.is_file()]
    if not files:
        print(f"note: --resume found no predictions file {pred.name}; starting from the first item", file=sys.stderr)
        return {}
    saved = json.loads(saved_path.read_text(encoding="utf-8")) if saved_path.is_file() else None
    comparable = {k: v for k, v in settings.items() if k not in SPLIT_SETTINGS}
    before = {k: v for k, v in (saved or {}).items() if k not in SPLIT_SETTINGS}
    if saved is None or before != comparable:
        differing = sorted(k for k in set(before) | set(comparable) if before.get(k) != comparable.get(k))
        raise CompositionError(f"{pred.name} was written with other settings ({saved_path.name}; differing: "
                               f"{', '.join(differing) or 'no settings file'}); resume with the same options and "
                               "experts, or run without --resume to start over.")
    previous: dict[tuple[str, str], str] = {}
    for path in files:
        previous.update(read_answers(path, ids))
    return previous


def read_answers(path: Path, ids: set[str]) -> dict[tuple[str, str], str]:
    """``{(id, variant): answer}`` of the lines of ``path`` whose id is in ``ids`` (a torn line is skipped)."""
    out: dict[tuple[str, str], str] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            key, text = (str(row["id"]), str(row["variant"])), row["answer"]
        except (ValueError, KeyError, TypeError):
            continue  # the line being written when the run stopped
        if key[0] in ids and isinstance(text, str):
            out[key] = text
    return out


class ProgressLog:
    """Appends each finished chunk's predictions to a file and flushes, so a killed run loses at most one chunk."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        self.file = path.open("w" if fresh else "a", encoding="utf-8")

    def __call__(self, predictions) -> None:
        for p in predictions:
            self.file.write(json.dumps(p.to_json()) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()
