"""Does a λ that varies by layer help DAMC? Scalar λ against schedules on the same items, paired.

The paper gives every expert one λ (1/K). mergekit users vary it over the layers and by
module (``composition.schedules``); the modality information enters in the early layers, so
where the text merge is strong may matter. This study answers the same items with DAMC under

- ``scalar``: the paper's λ = a = 1/K at every module;
- ``rising``: anchors [0, 2a] (0 at the first layer, 2a at the last; a on average);
- ``falling``: anchors [2a, 0];
- ``attention-only``: a on the attention projections, 0 on the MLP;

(every expert alike; μ = 1; ``scale`` multiplies a, as the interference curve's s does),
and compares each schedule with the scalar λ item by item:
accuracy with a 95 % bootstrap interval, the items only one of the two gets right, the
exact McNemar p-value and the paired bootstrap interval of the gap (``stats``).

    result = run_schedule_study(cm, items, files=StudyFiles(folder, stem, settings))
    result["schedules"]["rising"]["vs_scalar"]["p_value"]
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import CompositionError
from ..schedules import plain
from ..variants import DAMC, Coefficients, text_merge_pool
from .stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, bootstrap_difference, bootstrap_interval, compare_paired

JSON_FORMAT = "mllm-composition-studio/schedules/1"
SCALAR = "scalar"
# name -> the λ every expert gets, as a function of the paper's a = 1/K (each averages a over the layers,
# except attention-only, which drops the MLP's share).
SCHEDULES: dict[str, Callable[[float], object]] = {
    SCALAR: lambda a: a,
    "rising": lambda a: [0.0, 2 * a],
    "falling": lambda a: [2 * a, 0.0],
    "attention-only": lambda a: [{"filter": "self_attn", "value": a}, {"value": 0.0}],
}
Progress = Callable[[int, int, str], None]


@dataclass
class StudyFiles:
    """Each schedule's predictions file (what ``resume`` continues from) and the run's settings."""

    folder: Path
    stem: str
    settings: dict
    resume: bool = False

    def path(self, schedule: str) -> Path:
        return Path(self.folder) / f"{self.stem}-schedule-{schedule}-predictions.jsonl"


def study_coefficients(cm, items: Sequence, names: Sequence[str] = tuple(SCHEDULES),
                       scale: float = 1.0) -> dict[str, Coefficients]:
    """Per schedule name, the coefficients: every expert DAMC merges for these items gets the schedule at
    a = scale/K (scale 1: the paper's 1/K)."""
    unknown = [n for n in names if n not in SCHEDULES]
    if unknown:
        raise CompositionError(f"unknown schedule {unknown[0]!r}; the study knows {', '.join(SCHEDULES)}.")
    modality_sets = {tuple(sorted(item.modalities)) for item in items}
    if len(modality_sets) != 1:
        raise CompositionError("the schedule study needs items of one modality set (K is the same for every item); "
                               f"these have {len(modality_sets)}: use MCUB-synth-4 or one MCUB subset.")
    pool, decoupled = text_merge_pool(list(cm.experts.values()), set(next(iter(modality_sets))))
    if not decoupled:
        raise CompositionError("the schedule study runs DAMC, which needs decoupled experts for the items' modalities; "
                               "load them (the bundled set has them).")
    Coefficients(lambda_scale=scale)  # the engine's range check and message
    a = scale / len(pool)
    return {n: Coefficients(lambdas={e.name: SCHEDULES[n](a) for e in pool.values()}) for n in names}


def run_schedule_study(cm, items: Sequence, *, names: Sequence[str] = tuple(SCHEDULES), config=None, rule=None,
                       batch_items: int = 8, files: StudyFiles | None = None, progress: Progress | None = None,
                       level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                       data: dict | None = None, scale: float = 1.0) -> dict:
    """DAMC under each schedule on ``items``, at a = scale/K; the JSON that docs/data/schedules-*.json holds."""
    items = list(items)
    if not items:
        raise CompositionError("the schedule study needs items; none were given.")
    if SCALAR not in names:
        raise CompositionError(f"the study compares every schedule with {SCALAR!r}; keep it among the names.")
    coefficients = study_coefficients(cm, items, names, scale)
    start = time.perf_counter()
    correct, applied, resumed = {}, {}, 0
    for i, name in enumerate(names):
        result, reused = _run_one(cm, items, coefficients[name], files, name, i * len(items), len(items) * len(names),
                                  progress, config=config, rule=rule, batch_items=batch_items)
        resumed += reused
        by = {p.item_id: p.correct for p in result.predictions}
        correct[name] = [bool(by[item.id]) for item in items]
        present = set(items[0].modalities)
        applied[name] = cm.plan(present, [DAMC], coefficients[name]).variants[0].coefficients_json()
    out = {"format": JSON_FORMAT, "variant": DAMC, "items": len(items), "data": dict(data or {}), "scale": scale,
           "seconds": round(time.perf_counter() - start, 1), "resumed_answers": resumed, "level": level,
           "item_ids": [item.id for item in items], "schedules": {}}
    base = correct[SCALAR]
    for name in names:
        c = correct[name]
        entry = {"coefficients": applied[name], "accuracy": round(sum(c) / len(c), 4),
                 "interval": [round(x, 4) for x in bootstrap_interval(c, level=level, resamples=resamples, seed=seed)],
                 "outcomes": "".join("1" if x else "0" for x in c)}
        if name != SCALAR:
            paired = compare_paired(c, base)
            entry["vs_scalar"] = {**paired.to_json(), "right_only_schedule": paired.only_a,
                                  "right_only_scalar": paired.only_b,
                                  "difference_interval": [round(x, 4) for x in bootstrap_difference(
                                      c, base, level=level, resamples=resamples, seed=seed)]}
        out["schedules"][name] = entry
    return out


def _run_one(cm, items, coefficients, files: StudyFiles | None, name: str, done: int, total: int,
             progress: Progress | None, **options):
    """DAMC over every item under one schedule, resumed from and saved to its predictions file."""
    from .runner import evaluate_to_file

    settings = {} if files is None else {**files.settings, "schedule": name,
                                         "lambdas": {k: plain(v) for k, v in coefficients.lambdas.items()}}
    report = None if progress is None else (lambda n, _total: progress(done + n, total, name))
    return evaluate_to_file(cm, items, [DAMC], coefficients, files.path(name) if files else None, settings,
                            resume=bool(files and files.resume), progress=report, config=options["config"],
                            batch_items=options["batch_items"], rule=options["rule"])


def table_lines(result: dict) -> list[str]:
    """The study as text: one line per schedule (accuracy, interval, against the scalar λ)."""
    from ..plan import describe_coefficients

    lines = [f"{'schedule':<16} {'λ per expert':<34} {'accuracy':>8}  {'95% interval':<15} vs scalar λ"]
    for name, entry in result["schedules"].items():
        lam = describe_coefficients({"lambdas": dict(list(entry["coefficients"]["lambdas"].items())[:1])})
        lo, hi = entry["interval"]
        vs = entry.get("vs_scalar")
        versus = "" if vs is None else (f"{vs['right_only_schedule']} right only here, {vs['right_only_scalar']} only "
                                        f"with scalar, p = {vs['p_value']:.3g}")
        lines.append(f"{name:<16} {lam.partition(' ')[2].partition(' ')[2]:<34} {entry['accuracy']:>8.3f}  "
                     f"[{lo:.3f}, {hi:.3f}]  {versus}")
    return lines
