"""Choosing λ and μ without labels (AdaMMS's criterion), beside the labelled choice and the paper's default.

AdaMMS (Du et al., "AdaMMS: Model Merging for Heterogeneous Multimodal Large Language Models with
Unsupervised Coefficient Optimization", CVPR 2025; code THUNLP-MT/AdaMMS,
``search/view_log_delta_perdata_search_limit.py``) chooses a merge coefficient from the model's own
answers on unlabelled items: it answers every item at each candidate coefficient α of a sorted grid
and, for each α with a neighbour on both sides, counts the items whose answer at α is not the same
(compared lower-cased) as the answers at both neighbouring α ("exact_match" difference strategy;
the grid's two ends have no score). The chosen α is the one with the fewest differences: where a
small change of the coefficient changes the answers least. (The script optionally smooths the counts
over K neighbours, default K = 0, and samples 100 items; both are parameters here.)

Here the grid has two axes, λ scale (λ_i = scale/K) and μ (every modality), as ``tune.py``'s. The
criterion carries over cell by cell: a cell's neighbours are the adjacent cells along each axis;
a cell is a candidate when it has both neighbours along every axis of three or more values (an
axis of two values gives each cell its one neighbour); its score is the number of items whose
answer differs from any neighbour's. Ties go to the cell nearest the paper's default (scale 1,
μ 1), then grid order.

Every cell of the grid answers in the same batch (one row per item and cell), so the labelled
search (``tune.py``'s rule: the best validation accuracy) comes from the same answers, scored
against the gold; the unlabelled choice never reads a gold answer. Both choices and the paper's
default are then run on *test* items disjoint from the search items, and compared pairwise
(``paired.py``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..errors import CompositionError
from .tune import DEFAULT_MUS, DEFAULT_SCALES, MAX_CELLS, check_disjoint, coefficients_at

ADAMMS_SAMPLE = 100  # the script's --sample default: at most this many unlabelled items are read


@dataclass(frozen=True)
class Cell:
    scale: float
    mu: float

    @property
    def label(self) -> str:
        return f"λ scale {self.scale:g}, μ {self.mu:g}"


def grid_cells(scales: Sequence[float], mus: Sequence[float]) -> list[Cell]:
    """The grid in order: μ outer, λ scale inner (as ``tune_coefficients`` walks it)."""
    scales, mus = sorted(float(s) for s in scales), sorted(float(m) for m in mus)
    if len(set(scales)) != len(scales) or len(set(mus)) != len(mus):
        raise CompositionError("the λ scales and μ values must each be distinct.")
    if not scales or not mus or len(scales) * len(mus) > MAX_CELLS:
        raise CompositionError(f"the grid has {len(scales)}×{len(mus)} cells; give 1 to {MAX_CELLS}.")
    return [Cell(s, m) for m in mus for s in scales]


def agreement_scores(answers: dict[Cell, Sequence[str]], scales: Sequence[float], mus: Sequence[float],
                     smooth: int = 0) -> dict[Cell, int | float]:
    """AdaMMS's difference count per candidate cell: items whose answer (lower-cased, stripped) is not the
    same as every neighbour's. ``smooth``: the script's moving average over ``smooth`` candidates on each
    side along the λ-scale axis (0: none)."""
    scales, mus = sorted(scales), sorted(mus)
    axes = [(scales, 0), (mus, 1)]

    def neighbours(cell: Cell) -> list[Cell] | None:
        out = []
        for values, axis in axes:
            here = values.index(cell.scale if axis == 0 else cell.mu)
            found = [values[j] for j in (here - 1, here + 1) if 0 <= j < len(values)]
            if len(values) >= 3 and len(found) < 2:
                return None  # an end of this axis: no score, as AdaMMS leaves the grid's ends out
            out += [Cell(v, cell.mu) if axis == 0 else Cell(cell.scale, v) for v in found]
        return out

    def norm(text: str) -> str:
        return str(text).strip().lower()

    scores: dict[Cell, int | float] = {}
    for cell in answers:
        near = neighbours(cell)
        if near is None:
            continue
        mine = answers[cell]
        scores[cell] = sum(1 for j in range(len(mine)) if any(norm(mine[j]) != norm(answers[n][j]) for n in near))
    if smooth > 0:
        smoothed = {}
        for cell in scores:
            row = [c for c in scores if c.mu == cell.mu]
            row.sort(key=lambda c: c.scale)
            i = row.index(cell)
            window = row[max(0, i - smooth): i + smooth + 1]
            smoothed[cell] = sum(scores[c] for c in window) / len(window)
        scores = smoothed
    return scores


def _nearest_default(cells: Sequence[Cell], order: Sequence[Cell]):
    return min(cells, key=lambda c: (abs(c.scale - 1) + abs(c.mu - 1), order.index(c)))


@dataclass
class CoefficientSearch:
    """The grid's answers on the search items, both choices, and the three settings on the test items."""

    variant: str
    cells: list[Cell]
    validation_accuracy: dict[Cell, float]
    differences: dict[Cell, float]
    labelled: Cell
    unsupervised: Cell
    test: dict  # the paired report of the three settings on the test items (paired_report)
    test_names: dict[str, Cell]  # report name -> cell
    n_search: int
    n_test: int
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"variant": self.variant, "criterion": "AdaMMS exact-match answer differences with the neighbouring cells",
                "search_items": self.n_search, "test_items": self.n_test,
                "grid": [{"scale": c.scale, "mu": c.mu, "validation_accuracy": round(self.validation_accuracy[c], 4),
                          "differences": self.differences.get(c)} for c in self.cells],
                "labelled": {"lambda_scale": self.labelled.scale, "mu": self.labelled.mu,
                             "validation_accuracy": round(self.validation_accuracy[self.labelled], 4)},
                "unsupervised": {"lambda_scale": self.unsupervised.scale, "mu": self.unsupervised.mu,
                                 "differences": self.differences[self.unsupervised],
                                 "validation_accuracy": round(self.validation_accuracy[self.unsupervised], 4)},
                "test": self.test, "test_settings": {name: {"lambda_scale": c.scale, "mu": c.mu} for name, c in self.test_names.items()},
                "seconds": round(self.seconds, 3), "notes": list(self.notes)}

    def format(self) -> list[str]:
        from .paired import format_report

        lines = [f"{self.variant} coefficients on {self.n_search} search items ({len(self.cells)} cells, every cell in one batch):",
                 f"  labelled (best validation accuracy): {self.labelled.label} — "
                 f"{100 * self.validation_accuracy[self.labelled]:.1f} %",
                 f"  unsupervised (AdaMMS: fewest answer changes against the neighbouring cells, "
                 f"{self.differences[self.unsupervised]:g} of {self.n_search} items): {self.unsupervised.label} "
                 f"(its validation accuracy, not used to choose: {100 * self.validation_accuracy[self.unsupervised]:.1f} %)",
                 f"on {self.n_test} disjoint test items:"]
        return lines + format_report(self.test, indent="  ")


def answer_cells(cm, items: Sequence, cells: Sequence[Cell], *, variant: str = "DAMC", config=None, prompt: str = "studio",
                 batch_items: int = 4, progress: Callable[[int, int], None] | None = None) -> dict[Cell, list[str]]:
    """Every item answered with ``variant`` at every cell, all cells of a chunk of items in one batch.

    Returns ``{cell: [answer per item, in item order]}``.
    """
    from ..composer import RowRequest
    from ..inputs import decoder_needs
    from ..plan import Plan
    from .prompt import paper_message
    from .runner import DEFAULT_CONFIG, _chunks, _load_chunk_inputs

    config = config or DEFAULT_CONFIG
    items = list(items)
    out = {c: [""] * len(items) for c in cells}
    needs = decoder_needs(cm.experts.values())
    done = 0
    for chunk in _chunks(items, batch_items):
        modalities = items[chunk[0]].modalities
        plans = [cm.plan(set(modalities), [variant], coefficients_at(cm, modalities, c.scale, c.mu, variant)) for c in cells]
        if any(not p.variants for p in plans):
            why = next(iter(plans[0].skipped.values()), "no expert takes part")
            raise CompositionError(f"{variant} cannot run on {'+'.join(modalities)} items: {why}.")
        # One plan whose variants are the cells: rows k·C + c answer item k with cell c's coefficients.
        joined = Plan([p.variants[0] for p in plans], {}, {}, plans[0].present, plans[0].merge_all_experts)
        requests = []
        for i, inputs in zip(chunk, _load_chunk_inputs([items[i] for i in chunk], needs)):
            requests.append(RowRequest(items[i].prompt, inputs, message_fn=paper_message) if prompt == "paper"
                            else RowRequest(items[i].question, inputs))
        answers = cm.generate_rows(requests, joined, config)
        for i, row in zip(chunk, answers):
            for cell, answer in zip(cells, row):
                out[cell][i] = answer.text
        done += len(chunk)
        if progress:
            progress(done, len(items))
    return out


def search_coefficients(cm, search_items: Sequence, test_items: Sequence, *, scales: Sequence[float] = DEFAULT_SCALES,
                        mus: Sequence[float] = DEFAULT_MUS, variant: str = "DAMC", rule=None, config=None,
                        prompt: str = "studio", batch_items: int = 4, smooth: int = 0, sample: int | None = ADAMMS_SAMPLE,
                        seed: int = 2, progress: Callable[[int, int, str], None] | None = None) -> CoefficientSearch:
    """The labelled and the unlabelled choice from one grid run on ``search_items``, reported on ``test_items``.

    ``sample``: at most this many search items are answered (a seeded sample, as the AdaMMS script's
    ``--sample 100`` with ``random.seed(2)``); None: all. The unlabelled choice reads only the answers;
    the labelled one scores them against the gold with ``rule``.
    """
    import random

    from .paired import paired_report
    from .runner import RULES

    rule = rule or RULES["letter"]
    search_items, test_items = list(search_items), list(test_items)
    if not search_items or not test_items:
        raise CompositionError(f"the search needs search and test items; got {len(search_items)} and {len(test_items)}.")
    check_disjoint(search_items, test_items)
    if sample is not None and len(search_items) > sample:
        picked = sorted(random.Random(seed).sample(range(len(search_items)), sample))
        search_items = [search_items[i] for i in picked]
    cells = grid_cells(scales, mus)
    if not any(len(v) >= 3 for v in (set(scales), set(mus))) and len(cells) < 2:
        raise CompositionError("the unsupervised choice compares neighbouring cells: give at least two grid values.")
    start = time.perf_counter()
    say = (lambda done, total, label: progress(done, total, label)) if progress else (lambda *a: None)
    answers = answer_cells(cm, search_items, cells, variant=variant, config=config, prompt=prompt, batch_items=batch_items,
                           progress=lambda d, t: say(d, t + len(test_items), f"search items, {len(cells)} cells each"))
    stops = tuple(getattr(cm.base.template, "stop_strings", ()) or ())
    accuracy = {c: sum(rule.correct(a, item.answer, stops) for a, item in zip(answers[c], search_items)) / len(search_items)
                for c in cells}
    differences = agreement_scores(answers, scales, mus, smooth)
    if not differences:
        raise CompositionError("no grid cell has a neighbour on both sides; give at least three λ scales or three μ values.")
    fewest = min(differences.values())
    unsupervised = _nearest_default([c for c in differences if differences[c] == fewest], cells)
    best = max(accuracy.values())
    labelled = _nearest_default([c for c in cells if accuracy[c] == best], cells)
    default = Cell(1.0, 1.0)
    settings = {"paper default": default, "labelled tune": labelled, "unsupervised (AdaMMS)": unsupervised}
    chosen = list(dict.fromkeys(settings.values()))
    test_answers = answer_cells(cm, test_items, chosen, variant=variant, config=config, prompt=prompt, batch_items=batch_items,
                                progress=lambda d, t: say(len(search_items) + d, len(search_items) + t, "test items"))
    predictions = []
    for name, cell in settings.items():
        for item, text in zip(test_items, test_answers[cell]):
            predictions.append({"id": item.id, "variant": name, "correct": rule.correct(text, item.answer, stops)})
    report = paired_report(predictions, list(settings))
    notes = []
    if default not in cells:
        notes.append("the paper's default (scale 1, μ 1) is not a grid cell; it is run on the test items only.")
    return CoefficientSearch(variant, cells, accuracy, differences, labelled, unsupervised, report, settings,
                             len(search_items), len(test_items), time.perf_counter() - start, notes)
