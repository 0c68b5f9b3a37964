"""DAMC's adaptive parameter adjustment, honestly: pick λ and μ on validation items, report on test items.

The paper chooses the text merge coefficients λ and the modality coefficients μ on a
validation set of the target task. ``tune_coefficients`` searches a grid (λ_i = scale/K
for the K experts taking part, one μ for every modality, as the Benchmark tab's sweep),
keeps the best validation cell and scores that one setting, and the paper's default
(scale 1, μ 1), on *test* items disjoint from the validation items (no test item shares
its input files and question with a validation item). The test accuracy is never used to
choose.

    result = tune_coefficients(cm, val_items, test_items, scales=(0.5, 1, 1.5), mus=(0.5, 1))
    result.best_scale, result.best_mu, result.validation_accuracy, result.test_accuracy
    cm_coefficients = result.coefficients(cm, item.modalities)   # what to put on the sliders
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..errors import CompositionError

DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)
DEFAULT_MUS = (0.5, 0.75, 1.0, 1.25)
MAX_CELLS = 64


def coefficients_at(cm, modalities: Sequence[str], scale: float, mu: float, variant: str = "DAMC"):
    """The Coefficients of one grid cell for items of ``modalities``: λ_i = scale · (the paper's 1/K), μ for each."""
    from ..variants import Coefficients

    plan = cm.plan(set(modalities), [variant])
    if not plan.variants:
        why = next(iter(plan.skipped.values()), "no expert takes part")
        raise CompositionError(f"{variant} cannot run on {'+'.join(modalities)} items: {why}.")
    defaults = plan.variants[0].lambdas
    return Coefficients({name: scale * lam for name, lam in defaults.items()}, {m: mu for m in modalities})


@dataclass
class TuneResult:
    """The search: every validation cell, the chosen setting, and its accuracy on the test items."""

    variant: str
    grid: list[dict]  # {"scale", "mu", "accuracy"} per cell, validation items
    best_scale: float
    best_mu: float
    validation_accuracy: float
    test_accuracy: float
    default_test_accuracy: float  # the paper's default (scale 1, μ 1) on the same test items
    n_validation: int
    n_test: int
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    test_statistics: dict | None = None  # the best cell against the paper's default on the test items (paired.py)

    def coefficients(self, cm, modalities: Sequence[str]):
        return coefficients_at(cm, modalities, self.best_scale, self.best_mu, self.variant)

    def to_json(self) -> dict:
        return {"variant": self.variant, "best": {"lambda_scale": self.best_scale, "mu": self.best_mu},
                "validation_accuracy": round(self.validation_accuracy, 4), "test_accuracy": round(self.test_accuracy, 4),
                "default_test_accuracy": round(self.default_test_accuracy, 4),
                "validation_items": self.n_validation, "test_items": self.n_test,
                "grid": [{**c, "accuracy": round(c["accuracy"], 4)} for c in self.grid], "seconds": round(self.seconds, 3),
                **({"test_statistics": self.test_statistics} if self.test_statistics is not None else {})}


def split_items(items: Sequence, fraction: float, seed: int = 0) -> tuple[list, list]:
    """``(validation, test)``: a seeded ``fraction`` of ``items`` for tuning, the rest (in file order) for the report."""
    import random

    if not 0 < fraction < 1:
        raise CompositionError(f"validation fraction {fraction}; expected a number between 0 and 1.")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(fraction * len(order)))
    if n_val >= len(order):
        raise CompositionError(f"{len(order)} items cannot be split into validation and test; give more items "
                               "(or separate validation items).")
    chosen = set(order[:n_val])
    return ([items[i] for i in sorted(chosen)], [items[i] for i in range(len(items)) if i not in chosen])


def parse_grid(text: str, what: str) -> list[float]:
    """'0.5, 1, 1.5' -> [0.5, 1.0, 1.5], with a clear error naming ``what``."""
    try:
        values = [float(v) for v in str(text).replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise CompositionError(f"{what} {text!r} must be numbers separated by commas, e.g. 0.5, 1, 1.5.") from None
    if not values:
        raise CompositionError(f"{what} is empty; give numbers separated by commas, e.g. 0.5, 1, 1.5.")
    return values


def check_disjoint(validation: Sequence, test: Sequence) -> None:
    """Refuse a test item that is also a validation item (same question and same input files)."""
    seen = {(item.prompt, tuple(str(p) for _, p in item.inputs)) for item in validation}
    shared = [item.id for item in test if (item.prompt, tuple(str(p) for _, p in item.inputs)) in seen]
    if shared:
        raise CompositionError(f"{len(shared)} test item(s) are also validation items (first: {shared[0]!r}); "
                               "tune on a disjoint validation split (another seed for MCUB-synth).")


def tune_coefficients(cm, validation: Sequence, test: Sequence, *, scales: Sequence[float] = DEFAULT_SCALES,
                      mus: Sequence[float] = DEFAULT_MUS, variant: str = "DAMC", rule=None, config=None,
                      prompt: str = "studio", batch_items: int = 8,
                      progress: Callable[[int, int, str], None] | None = None) -> TuneResult:
    """Search λ scale × μ on ``validation``, apply the best to ``test``.

    Args:
        cm: a ComposedModel (or a ``subset`` view) with decoupled experts for the items' modalities.
        validation, test: McubItem lists, disjoint (``check_disjoint``).
        scales: λ_i = scale/K (1 = the paper's 1/K); mus: μ, the same for every modality.
        variant: the variant whose coefficients are searched (DAMC, or a merge method).
        rule, config, prompt, batch_items: as ``composition.mcub.evaluate``.
        progress: called with (cells done, cells in all, label).
    Ties on validation go to the cell nearest the paper's default (scale 1, μ 1), then grid order.
    """
    import time

    from .runner import evaluate

    validation, test = list(validation), list(test)
    if not validation or not test:
        raise CompositionError(f"tuning needs validation and test items; got {len(validation)} and {len(test)}.")
    scales, mus = [float(s) for s in scales], [float(m) for m in mus]
    if not scales or not mus or len(scales) * len(mus) > MAX_CELLS:
        raise CompositionError(f"the grid has {len(scales)}×{len(mus)} cells; give 1 to {MAX_CELLS} (each cell runs every validation item).")
    check_disjoint(validation, test)
    start = time.perf_counter()

    test_runs = {}

    def run(items, scale, mu) -> float:
        result = evaluate(cm, items, [variant], rule=rule, config=config, prompt=prompt, batch_items=batch_items,
                          coefficients_for=lambda modalities: coefficients_at(cm, modalities, scale, mu, variant))
        if items is test:
            test_runs[(scale, mu)] = result
        return result.accuracy()[result.variants[0]]

    grid, cells = [], len(scales) * len(mus)
    for mu in mus:
        for scale in scales:
            grid.append({"scale": scale, "mu": mu, "accuracy": run(validation, scale, mu)})
            if progress is not None:
                progress(len(grid), cells + 2, f"validation cell λ scale {scale:g}, μ {mu:g}")
    best = max(grid, key=lambda c: (c["accuracy"], -abs(c["scale"] - 1) - abs(c["mu"] - 1), -grid.index(c)))
    test_acc = run(test, best["scale"], best["mu"])
    if progress is not None:
        progress(cells + 1, cells + 2, "test items, best setting")
    default_acc = test_acc if (best["scale"], best["mu"]) == (1.0, 1.0) else run(test, 1.0, 1.0)
    if progress is not None:
        progress(cells + 2, cells + 2, "test items, paper default")
    from .paired import paired_report

    statistics = None
    if (best["scale"], best["mu"]) != (1.0, 1.0):  # the same setting twice needs no test
        names = {f"best (λ scale {best['scale']:g}, μ {best['mu']:g})": (best["scale"], best["mu"]),
                 "paper default (λ scale 1, μ 1)": (1.0, 1.0)}
        rows = [{"id": p.item_id, "variant": name, "correct": p.correct}
                for name, key in names.items() for p in test_runs[key].predictions]
        statistics = paired_report(rows, list(names))
    return TuneResult(variant, grid, best["scale"], best["mu"], best["accuracy"], test_acc, default_acc,
                      len(validation), len(test), time.perf_counter() - start, test_statistics=statistics)
