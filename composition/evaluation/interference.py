"""The interference curve: the shared composition and DAMC at λ = s·(1/K) per expert, on the same items.

The paper's claim (DESIGN.md §1): merging shared experts makes every token, the modality
tokens included, pass through every expert's delta, so the experts interfere; DAMC routes
a modality's tokens through that modality's own delta alone and merges only the text deltas.
What the bundled experts show of it, measured with this module, is in docs/interference.md.
At the paper's λ = 1/K the bundled set sits at the ceiling with both, so the curve raises λ:
at each scale s, every expert's λ is s·(1/K) (``Coefficients.lambda_scale``), and one batch
answers every item with

- ``NaiveMC`` (the shared composition, Σ λ_i·D_i on every token; at s = 1 the paper's NaiveMC),
- ``DAMC`` (Σ λ_i·T_i on text tokens, μ_i·M_i on the tokens of modality i),
- and, with ``route_check`` at s ≠ 1, ``NaiveMC-text-lambda``: the shared composition with λ on
  its text tokens only, its modality tokens kept at the paper's mean (``LambdaRoutes.TEXT_ONLY``).
  It tests the explanation: if the shared merge loses through its modality tokens, this
  variant keeps most of what the shared merge loses. ``modality_checks_at`` adds the other
  half, ``NaiveMC-modality-lambda`` (λ on modality tokens only), at the scales it names, in its
  own predictions file, so it can be added to a finished run.

Each point carries each variant's accuracy with a 95 % bootstrap interval and the paired
comparison of DAMC with the shared merge (right-alone counts, exact McNemar p, the paired
bootstrap interval of the gap); each scale also lists the items the shared merge gets wrong
and DAMC right (the Learn tab shows a few). On MCUB-synth items, whose answers name an option
before its letter ("drum (A)"), each point also scores the option *named* (the same numbers
for it): what a composition recognised and combined, apart from the letter lookup that
follows, so a drop in accuracy can be told apart from a drop in what the modalities gave. With
``retention``, each scale also asks the text-only retention set (``retention.py``: no input, the
base alone as reference) of both compositions at that scale: what a larger λ costs the base's own
skills, apart from the modalities.

    result = run_interference(cm, items, scales=(1, 2, 4))
    result.points[1].paired.only_a, result.points[1].paired.p_value
    plot_png([result.to_json()], "interference.png")
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import CompositionError
from ..variants import DAMC, NAIVE, NAIVE_MODALITY_LAMBDA, NAIVE_TEXT_LAMBDA, Coefficients, LambdaRoutes, VariantSpec
from .scoring import named_option
from .stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, PairedComparison, bootstrap_difference, bootstrap_interval, compare_paired

DEFAULT_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0)
SHARED, DECOUPLED, ROUTE_CHECK, MODALITY_CHECK = NAIVE, DAMC, NAIVE_TEXT_LAMBDA, NAIVE_MODALITY_LAMBDA
LABELS = {SHARED: "shared (NaiveMC, Σ λ·D on every token)", DECOUPLED: "decoupled (DAMC)",
          ROUTE_CHECK: "shared, λ on text tokens only (modality tokens at 1/K)",
          MODALITY_CHECK: "shared, λ on modality tokens only (text tokens at 1/K)"}
CHECK_KEYS = {ROUTE_CHECK: "text_only", MODALITY_CHECK: "modality_only"}
RETENTION_NOTE = "text-only retention: not measured in this run (--retention measures it at each scale)"
# The bar for "the bundled set shows the paper's point": at scale 2, DAMC ahead by 0.1 with p < 0.05.
CRITERION = {"scale": 2.0, "min_gap": 0.1, "alpha": 0.05}
JSON_FORMAT = "mllm-composition-studio/interference/1"
# An MCUB-synth question's options: "... A. drum B. ball C. cone D. ring Answer with the option's letter."
SYNTH_OPTION = re.compile(r"\b([A-D])\. ([a-z]+)\b")

Progress = Callable[[int, int, str], None]  # (items done over all scales, items in all, label)


def check_scales(scales: Sequence[float]) -> list[float]:
    """The scales as floats, each a valid ``lambda_scale``, without repeats, in the order given."""
    out: list[float] = []
    for s in scales:
        Coefficients(lambda_scale=s)  # the engine's range check and message
        if float(s) in out:
            raise CompositionError(f"scale {s:g} is given twice; give each scale once.")
        out.append(float(s))
    if not out:
        raise CompositionError("no scale given; give at least one, e.g. 1, 2, 4 (λ = s·1/K).")
    return out


def scale_specs(scale: float, route_check: bool = True) -> list[VariantSpec]:
    """The variants of one scale's main batch: the shared composition, DAMC, and (s ≠ 1) the text-route check."""
    specs = [VariantSpec.naive(), VariantSpec.parse(DAMC)]
    if route_check and scale != 1.0:  # at s = 1 both routes already use 1/K: the check is NaiveMC itself
        specs.append(VariantSpec.naive(LambdaRoutes.TEXT_ONLY))
    return specs


def scale_parts(scale: float, route_check: bool = True,
                modality_checks_at: Sequence[float] = ()) -> dict[str, list[VariantSpec]]:
    """What one scale runs, by predictions file: ``""`` the main batch (with the text-route check at
    s ≠ 1), ``"modality"`` the modality-route check where ``modality_checks_at`` names the scale."""
    parts = {"": scale_specs(scale, route_check)}
    if scale != 1.0 and scale in [float(c) for c in modality_checks_at]:
        parts["modality"] = [VariantSpec.naive(LambdaRoutes.MODALITY_ONLY)]
    return parts


# --- where predictions go (resume) ------------------------------------------------------
@dataclass
class RunFiles:
    """Each scale's predictions file (what ``resume`` continues from) and the settings that make a
    stopped run's answers reusable (``composition.evaluation.predictions.run_settings``; the scale
    and the variants are filled in per scale)."""

    folder: Path
    stem: str
    settings: dict
    resume: bool = False

    def path(self, scale: float, part: str = "") -> Path:
        """``<stem>-interference-s<scale>[-<part>]-predictions.jsonl`` (a part: a check run in its own batch)."""
        return Path(self.folder) / f"{self.stem}-interference-s{scale:g}{'-' + part if part else ''}-predictions.jsonl"

    def settings_for(self, scale: float, names: Sequence[str]) -> dict:
        return {**self.settings, "variants": list(names), "lambda_scale": scale}


# --- the option an answer names (MCUB-synth) ---------------------------------------------
def synth_options(item) -> dict[str, str] | None:
    """``{"A": "drum", ...}`` of an MCUB-synth item's question; None for other items (their option
    texts are free phrases this reading does not claim to parse)."""
    if not getattr(item, "synth", False):
        return None
    options = dict(SYNTH_OPTION.findall(item.question))
    return options if len(options) >= 2 and item.answer.strip() in options else None


def names_gold(item, answer: str) -> bool | None:
    """Whether the answer names the item's gold option (None when the item's options are not known)."""
    options = synth_options(item)
    if options is None:
        return None
    return named_option(answer, list(options.values())) == options[item.answer.strip()]


@dataclass(frozen=True)
class Scored:
    """One measure over the same items: accuracy, interval, outcomes per variant, DAMC against the shared merge."""

    accuracy: dict[str, float]
    interval: dict[str, tuple[float, float]]
    outcomes: dict[str, str]  # variant -> "1"/"0" per item, in item order
    paired: PairedComparison  # a = DAMC, b = the shared merge
    gap_interval: tuple[float, float]  # paired bootstrap interval of accuracy(DAMC) − accuracy(shared)
    # the route checks run: "text_only" / "modality_only" -> {"vs_shared": (a = the check), "vs_damc": (a = DAMC)}
    checks: dict[str, dict[str, PairedComparison]] = field(default_factory=dict)

    @staticmethod
    def of(correct: dict[str, list[bool]], *, level: float, resamples: int, seed: int) -> "Scored":
        checks = {key: {"vs_shared": compare_paired(correct[v], correct[SHARED]),
                        "vs_damc": compare_paired(correct[DECOUPLED], correct[v])}
                  for v, key in CHECK_KEYS.items() if v in correct}
        return Scored({v: sum(c) / len(c) for v, c in correct.items()},
                      {v: bootstrap_interval(c, level=level, resamples=resamples, seed=seed) for v, c in correct.items()},
                      {v: "".join("1" if x else "0" for x in c) for v, c in correct.items()},
                      compare_paired(correct[DECOUPLED], correct[SHARED]),
                      bootstrap_difference(correct[DECOUPLED], correct[SHARED], level=level, resamples=resamples, seed=seed),
                      checks)

    def to_json(self) -> dict:
        out = {"accuracy": {v: round(a, 4) for v, a in self.accuracy.items()},
               "interval": {v: [round(lo, 4), round(hi, 4)] for v, (lo, hi) in self.interval.items()},
               "damc_vs_shared": {**self.paired.to_json(), "right_only_damc": self.paired.only_a,
                                  "right_only_shared": self.paired.only_b,
                                  "difference_interval": [round(x, 4) for x in self.gap_interval]},
               "outcomes": self.outcomes}
        if self.checks:
            out["route_check"] = {k: {side: c.to_json() for side, c in v.items()} for k, v in self.checks.items()}
        return out


# --- results --------------------------------------------------------------------------
@dataclass
class ScalePoint:
    """One scale: accuracy (the score) and, on MCUB-synth, the option named, each with intervals and DAMC
    against the shared merge (paired); the route checks; items the shared merge fails and DAMC does not."""

    scale: float
    n_items: int
    letter: Scored  # the benchmark's score: the answer's letter
    coefficients: dict[str, dict]  # variant -> the values applied (ResolvedVariant.coefficients_json of the plan)
    named: Scored | None = None  # the option the answer names (MCUB-synth items), before its letter
    # items the shared merge gets wrong and DAMC right (naming the right option too, on MCUB-synth); first
    # those where the shared merge names a wrong option
    shared_fails: list[dict] = field(default_factory=list)
    retention: dict | None = None  # RetentionReport.to_json() of both compositions at this scale (``retention``)

    @property
    def accuracy(self) -> dict[str, float]:
        return self.letter.accuracy

    @property
    def interval(self) -> dict[str, tuple[float, float]]:
        return self.letter.interval

    @property
    def paired(self) -> PairedComparison:
        return self.letter.paired

    @property
    def outcomes(self) -> dict[str, str]:
        return self.letter.outcomes

    @property
    def route_check(self) -> dict[str, dict[str, PairedComparison]]:
        return self.letter.checks

    def to_json(self) -> dict:
        out = {"scale": self.scale, "items": self.n_items,
               "lambda_per_expert": {v: c.get("lambdas", {}) for v, c in self.coefficients.items()},
               **self.letter.to_json(), "coefficients": self.coefficients, "shared_fails_damc_right": self.shared_fails}
        out["named"] = self.named.to_json() if self.named is not None else None
        out["retention"] = self.retention
        return out


@dataclass
class InterferenceResult:
    """Every scale's point over the same items, and what the run was."""

    points: list[ScalePoint]
    item_ids: list[str]
    data: dict
    seconds: float
    level: float = DEFAULT_LEVEL
    settings: dict = field(default_factory=dict)
    resumed_answers: int = 0

    def point(self, scale: float) -> ScalePoint | None:
        return next((p for p in self.points if p.scale == float(scale)), None)

    def criterion(self) -> dict | None:
        """Whether DAMC beats the shared merge by ``min_gap`` with p < ``alpha`` at the criterion's scale."""
        p = self.point(CRITERION["scale"])
        if p is None:
            return None
        gap = p.paired.difference
        return {**CRITERION, "gap": round(gap, 4), "p_value": p.paired.p_value,
                "holds": gap >= CRITERION["min_gap"] and p.paired.p_value < CRITERION["alpha"]}

    def retention_summary(self) -> dict | None:
        """What each composition keeps of the base's right text-only answers, per scale (None: not measured)."""
        measured = [p for p in self.points if p.retention]
        if not measured:
            return None
        first = measured[0].retention
        return {"items": sum(first["parts"].values()), "parts": first["parts"], "base_accuracy": first["base"]["accuracy"],
                "kept": {f"{p.scale:g}": {v: s["retention"] for v, s in p.retention["variants"].items()} for p in measured}}

    def to_json(self) -> dict:
        return {"format": JSON_FORMAT, "data": self.data, "items": len(self.item_ids), "item_ids": self.item_ids,
                "level": self.level, "labels": LABELS, "lambda": "λ_i = s·(1/K) for every expert of each composition",
                "points": [p.to_json() for p in self.points], "criterion": self.criterion(),
                "retention": self.retention_summary(), "retention_note": None if self.retention_summary() else RETENTION_NOTE,
                "seconds": round(self.seconds, 1),
                "resumed_answers": self.resumed_answers, "settings": self.settings}


# --- running --------------------------------------------------------------------------
def run_interference(cm, items: Sequence, *, scales: Sequence[float] = DEFAULT_SCALES, route_check: bool = True,
                     modality_checks_at: Sequence[float] = (), mus: dict[str, float] | None = None, config=None, rule=None, prompt: str = "studio",
                     batch_items: int = 8, files: RunFiles | None = None, progress: Progress | None = None,
                     level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                     n_examples: int = 3, data: dict | None = None, retention: bool = False) -> InterferenceResult:
    """Answer ``items`` with the shared composition and DAMC (and the route check) at every scale.

    Args:
        cm: a ComposedModel with shared and decoupled experts for the items' modalities.
        items: McubItem list (every scale runs all of them, so the comparisons are paired).
        scales: s in λ_i = s·(1/K); 1 is the paper's. They run in this order (put the most telling
            first when a run may be stopped); the result lists them by s.
        route_check: also run ``NaiveMC-text-lambda`` at every s ≠ 1 (in the main batch).
        modality_checks_at: also run ``NaiveMC-modality-lambda`` at these scales (its own batch and file).
        mus: DAMC's μ per modality (default 1).
        config, rule, prompt, batch_items: as ``evaluate``.
        files: where each scale's predictions go (with ``resume``, answers already there are reused).
        progress: called with (items done over all scales, items × scales, label).
        level, resamples, seed: the bootstrap intervals.
        n_examples: items per scale kept in ``shared_fails`` (all their ids are in ``outcomes``).
        data: what the items are, recorded in the result (``{"data": "synth-4", "seed": 6173, ...}``).
        retention: also ask the text-only retention set of both compositions at every scale (not resumed:
            about a minute per scale on CPU).
    """
    items = list(items)
    scales = check_scales(scales)
    if not items:
        raise CompositionError("the interference curve needs items; none were given.")
    present = {m for item in items for m in item.modalities}
    for spec in (VariantSpec.naive(), VariantSpec.parse(DAMC)):  # both kinds must be loaded: a clear error first
        cm.plan(present, [spec])
    start = time.perf_counter()
    points, resumed = [], 0
    plans = [scale_parts(scale, route_check, modality_checks_at) for scale in scales]
    total = len(items) * sum(len(parts) for parts in plans)
    done = 0
    for scale, parts in zip(scales, plans):
        coefficients = Coefficients(mus=dict(mus or {}), lambda_scale=scale)
        predictions, names = [], []
        for part, specs in parts.items():
            label = f"λ = {scale:g}·(1/K)" + (f", {part} check" if part else "")
            result, reused = _run_part(cm, items, specs, coefficients, files, scale, part, label, done, total,
                                       progress, config=config, rule=rule, prompt=prompt, batch_items=batch_items)
            resumed += reused
            done += len(items)
            predictions += result.predictions
            names += list(result.variants)
        plan = cm.plan(present, [s for specs in parts.values() for s in specs], coefficients)
        points.append(_point(scale, items, predictions, names, {v.name: v.coefficients_json() for v in plan.variants},
                             level=level, resamples=resamples, seed=seed, n_examples=n_examples))
        if retention:
            from .retention import measure_retention

            if progress:
                progress(done, total, f"λ = {scale:g}·(1/K), text-only retention")
            points[-1].retention = measure_retention(cm, [SHARED, DECOUPLED], coefficients=coefficients).to_json()
    points.sort(key=lambda p: p.scale)  # run in the order given (the most telling first), reported along s
    return InterferenceResult(points, [item.id for item in items], dict(data or {}), time.perf_counter() - start, level,
                              files.settings if files is not None else {}, resumed)


def _run_part(cm, items, specs, coefficients, files: RunFiles | None, scale: float, part: str, label: str, done: int,
              total: int, progress: Progress | None, **options):
    """One batch of variants over every item, resumed from and saved to its predictions file; (result, answers reused)."""
    from .runner import evaluate_to_file

    names = [s.name for s in specs]
    report = None if progress is None else (lambda n, _total: progress(done + n, total, label))
    # The named option is read from the whole answer: the streaming stop, which ends an answer once
    # its letter is settled, would cut "C. star" to "C." (the bundled experts answer "star (C)").
    named = all(synth_options(item) is not None for item in items)
    result, reused = evaluate_to_file(
        cm, items, specs, coefficients, files.path(scale, part) if files else None,
        files.settings_for(scale, names) if files else {}, resume=bool(files and files.resume), progress=report,
        config=options["config"], batch_items=options["batch_items"], rule=options["rule"], prompt=options["prompt"],
        stop_when_scored=not named)
    if progress is not None:
        progress(done + len(items), total, label)
    return result, reused


def _point(scale: float, items: Sequence, predictions, names: list[str], coefficients: dict, *, level: float,
           resamples: int, seed: int, n_examples: int) -> ScalePoint:
    by = {(p.item_id, p.variant): p for p in predictions}
    correct = {v: [by[(item.id, v)].correct for item in items] for v in names}
    letter = Scored.of(correct, level=level, resamples=resamples, seed=seed)
    named = None
    if all(synth_options(item) is not None for item in items):
        named = Scored.of({v: [names_gold(item, by[(item.id, v)].answer) for item in items] for v in names},
                          level=level, resamples=resamples, seed=seed)
    fails = [item for item in items if by[(item.id, DECOUPLED)].correct and not by[(item.id, SHARED)].correct]
    if named is not None:
        # DAMC right in full (its letter may be right by chance after naming another option), and first the
        # items where the shared merge names a wrong option: what it got wrong is the content, not the letter.
        fails = [item for item in fails if names_gold(item, by[(item.id, DECOUPLED)].answer)]
        fails.sort(key=lambda item: bool(names_gold(item, by[(item.id, SHARED)].answer)))
    examples = [_example(item, {v: by[(item.id, v)].answer for v in names}) for item in fails[:n_examples]]
    return ScalePoint(scale, len(items), letter, coefficients, named, examples)


def _example(item, answers: dict[str, str]) -> dict:
    """What the Learn tab shows of an item: its question, gold, both answers and its input files."""
    return {"id": item.id, "question": item.question, "gold": item.answer, "answers": answers,
            "inputs": {m: _shown_path(p) for m, p in item.inputs}}


def copied_path(shown: str) -> str:
    """Where ``copy_examples`` puts an example file: its workspace path without a leading ``.cache/``
    (``.cache/mcub-synth/seed6173-n200/files/x.png`` -> ``mcub-synth/seed6173-n200/files/x.png``)."""
    return shown.removeprefix(".cache/")


def copy_examples(runs: Sequence[dict], folder: str | Path, per_scale: int = 3,
                  scale: float = CRITERION["scale"]) -> list[Path]:
    """Copy the input files of the first ``per_scale`` examples at ``scale`` (the ones the app shows) of
    ``runs`` (``to_json()`` dicts) into ``folder`` (at ``copied_path``), so the app can show them where the
    MCUB-synth set is not built (a fresh clone). Returns the files written; a file already there is kept."""
    import shutil

    from ..discovery import workspace_root

    written = []
    for run in runs:
        for point in (p for p in run["points"] if p["scale"] == float(scale)):
            for example in point.get("shared_fails_damc_right", [])[:per_scale]:
                for shown in example["inputs"].values():
                    source = Path(shown) if Path(shown).is_absolute() else workspace_root() / shown
                    if not source.is_file():
                        raise CompositionError(f"example file {shown} is not on this machine; build its MCUB-synth set "
                                               "first (the run's data names the seed).")
                    target = Path(folder) / copied_path(str(shown))
                    if not target.is_file():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(source, target)
                        written.append(target)
    return written


def _shown_path(path) -> str:
    """A path relative to the workspace when it lies inside it (what a committed JSON can hold), else as given."""
    from ..discovery import workspace_root

    path = Path(path)
    try:
        return path.resolve().relative_to(workspace_root().resolve()).as_posix()
    except ValueError:
        return str(path)


# --- output ---------------------------------------------------------------------------
def table_lines(run: dict) -> list[str]:
    """The curve as text, from ``InterferenceResult.to_json()`` (the CLI prints these)."""
    pct = int(round(100 * run.get("level", DEFAULT_LEVEL)))
    checks = [v for v in (ROUTE_CHECK, MODALITY_CHECK) if any(v in p["accuracy"] for p in run["points"])]
    heads = {ROUTE_CHECK: "shared, λ text only", MODALITY_CHECK: "shared, λ modality only"}
    lines = [f"{'s':>4} {'λ/expert':>9}  {'DAMC [' + str(pct) + '% CI]':<21} {'shared [' + str(pct) + '% CI]':<21} "
             f"{'gap':>6}  {'right only DAMC/shared':>22}  {'McNemar p':>9}" + "".join(f"  {heads[v]:<23}" for v in checks)
             + ("  named DAMC / shared (p)" if any(p.get("named") for p in run["points"]) else "")
             + ("  keeps base text DAMC / shared" if run.get("retention") else "")]
    for p in run["points"]:
        lam = next(iter(p["lambda_per_expert"].get(DECOUPLED, {}).values()), float("nan"))
        d = p["damc_vs_shared"]

        def cell(v: str) -> str:
            if v not in p["accuracy"]:
                return "—"
            lo, hi = p["interval"][v]
            return f"{p['accuracy'][v]:.3f} [{lo:.3f}, {hi:.3f}]"

        lines.append(f"{p['scale']:>4g} {lam:>9.4g}  {cell(DECOUPLED):<21} {cell(SHARED):<21} {d['difference']:>+6.3f}  "
                     f"{str(d['right_only_damc']) + ' / ' + str(d['right_only_shared']):>22}  {d['p_value']:>9.3g}"
                     + "".join(f"  {cell(v):<23}" for v in checks) + _named_cell(p.get("named"))
                     + _retention_cell(p.get("retention")))
    return lines


def _retention_cell(retention: dict | None) -> str:
    """The share of the base's right text-only answers each composition keeps at this scale."""
    if not retention:
        return ""
    kept = [retention["variants"][v]["retention"] for v in (DECOUPLED, SHARED)]
    return "  " + " / ".join("n/a" if k is None else f"{k:.2f}" for k in kept)


def _named_cell(named: dict | None) -> str:
    if not named:
        return ""
    a, d = named["accuracy"], named["damc_vs_shared"]
    return f"  {a[DECOUPLED]:.3f} / {a[SHARED]:.3f} ({d['p_value']:.2g})"


def plot_png(runs: Sequence[dict], path: str | Path, title: str | None = None) -> Path:
    """Accuracy against s (λ = s·1/K) with the intervals, one column per run (``to_json()`` dicts); a
    second row, when the runs have it, the option the answers name (MCUB-synth) on the same items."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CompositionError("the plot needs matplotlib: pip install matplotlib (the JSON was written).") from None
    runs = list(runs)
    rows = [("accuracy (the letter)", None)]
    if all(p.get("named") for run in runs for p in run["points"]):
        rows.append(("names the right option", "named"))
    fig, axes = plt.subplots(len(rows), len(runs), figsize=(4.6 * len(runs), 3.4 * len(rows)), dpi=90, squeeze=False,
                             sharey=True)
    styles = {DECOUPLED: ("tab:blue", "-", "o"), SHARED: ("tab:orange", "-", "s"), ROUTE_CHECK: ("tab:orange", ":", "^"),
              MODALITY_CHECK: ("tab:green", "-.", "v")}
    level = int(round(100 * runs[0].get("level", DEFAULT_LEVEL)))
    for r, (ylabel, key) in enumerate(rows):
        for ax, run in zip(axes[r], runs):
            measures = [(p, p[key] if key else p) for p in run["points"]]
            for variant, (colour, line, marker) in styles.items():
                pts = [(p, m) for p, m in measures if variant in m["accuracy"]]
                if not pts:
                    continue
                y = [m["accuracy"][variant] for _, m in pts]
                err = [[m["accuracy"][variant] - m["interval"][variant][0] for _, m in pts],
                       [m["interval"][variant][1] - m["accuracy"][variant] for _, m in pts]]
                ax.errorbar([p["scale"] for p, _ in pts], y, yerr=err, color=colour, linestyle=line, marker=marker,
                            capsize=3, label=LABELS[variant], markersize=4, linewidth=1.4)
            for p, m in measures:
                pv = m["damc_vs_shared"]["p_value"]
                if pv < 0.05:
                    ax.annotate(f"p={pv:.2g}", (p["scale"], m["accuracy"][DECOUPLED]), textcoords="offset points",
                                xytext=(4, 6), fontsize=7, color="tab:blue")
            ax.axhline(0.25, color="grey", linestyle="--", linewidth=0.8)
            ax.set(ylim=(0, 1.05), title=(title or _run_title(run)) if r == 0 else "")
            ax.set_xticks([p["scale"] for p in run["points"]])
            ax.grid(alpha=0.3)
            if r == len(rows) - 1:
                ax.set_xlabel("s (λ = s·1/K per expert)")
        axes[r][0].set_ylabel(f"{ylabel}\n({level} % interval)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.045 * 2 / len(rows) + 0.02, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _run_title(run: dict) -> str:
    data = run.get("data") or {}
    what = f"MCUB-{data['data']} seed {data['seed']}" if data.get("seed") is not None else Path(str(data.get("data", "items"))).name
    return f"{what}, {run['items']} items"
