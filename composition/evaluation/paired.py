"""Accuracy with its uncertainty: a 95 % bootstrap interval per variant, and every pair of variants
compared on the same items (right-alone counts, exact McNemar p-value).

The numbers come from ``composition.evaluation.stats`` (the percentile bootstrap and the exact
test); this module only lays predictions out as paired outcomes and the report every accuracy
table shows (``mcub --json`` and its text table, the Benchmark tab, the docs' tables).

    report = paired_report(result.predictions, result.variants)
    report["variants"]["DAMC"]        # {"accuracy": 0.97, "ci95": [0.945, 0.99], "right": 194, "items": 200}
    report["pairs"][0]                # {"a": "NaiveMC", "b": "DAMC", "only_a": 3, "only_b": 8, "p_value": 0.227, ...}
    print("\\n".join(format_report(report)))

Pairs are only formed on the items both variants answered; a variant's interval is over its own items.
"""
from __future__ import annotations

from itertools import combinations
from typing import Iterable, Mapping, Sequence

from ..errors import CompositionError
from .stats import DEFAULT_LEVEL, bootstrap_interval, compare_paired

# Fewer resamples than stats' default: a report has one interval per variant, and 4000 resamples
# put the 2.5th/97.5th percentiles within a fraction of an item of the 10 000-resample values.
REPORT_RESAMPLES = 4000


def outcomes_by_variant(predictions: Iterable, variants: Sequence[str] | None = None) -> dict[str, dict[tuple, bool]]:
    """``{variant: {(item id, n): correct}}`` from ``Prediction``s (or dicts with "id", "variant", "correct").

    ``n`` counts the earlier answers of the same variant to the same id (0 for a file of distinct ids):
    an id asked twice (a file that repeats an id) pairs its first answers, then its second ones.
    """
    out: dict[str, dict[tuple, bool]] = {}
    for p in predictions:
        if isinstance(p, Mapping):
            variant, item, correct = str(p["variant"]), str(p["id"]), bool(p["correct"])
        else:
            variant, item, correct = p.variant, p.item_id, bool(p.correct)
        seen = out.setdefault(variant, {})
        n = 0
        while (item, n) in seen:
            n += 1
        seen[(item, n)] = correct
    if variants is not None:
        missing = [v for v in variants if v not in out]
        if missing:
            raise CompositionError(f"no predictions for variant {missing[0]!r}; cannot report its accuracy.")
        out = {v: out[v] for v in variants}
    return out


def variant_summary(correct: Sequence[bool], *, level: float = DEFAULT_LEVEL, resamples: int = REPORT_RESAMPLES,
                    seed: int = 0) -> dict:
    """``{"accuracy", "ci95": [low, high], "right", "items"}`` of one variant's outcomes."""
    low, high = bootstrap_interval(list(correct), level=level, resamples=resamples, seed=seed)
    right = sum(bool(c) for c in correct)
    return {"accuracy": round(right / len(correct), 4), "ci95": [round(low, 4), round(high, 4)], "right": right,
            "items": len(correct)}


def pair_summary(a: str, b: str, outcomes: Mapping[str, Mapping[str, bool]]) -> dict | None:
    """``a`` against ``b`` on the items both answered; None when they share no item."""
    shared = [i for i in outcomes[a] if i in outcomes[b]]
    if not shared:
        return None
    pair = compare_paired([outcomes[a][i] for i in shared], [outcomes[b][i] for i in shared])
    return {"a": a, "b": b, "items": len(shared), **pair.to_json(), "p_value": float(f"{pair.p_value:.4g}")}


def paired_report(predictions: Iterable, variants: Sequence[str] | None = None, *, level: float = DEFAULT_LEVEL,
                  resamples: int = REPORT_RESAMPLES, seed: int = 0) -> dict:
    """Per variant its accuracy and bootstrap interval; per pair of variants (in ``variants`` order)
    the items right with both, with one alone, with neither, and the exact McNemar p-value.

    Returns ``{"level", "resamples", "variants": {name: summary}, "pairs": [pair, ...]}``.
    """
    outcomes = outcomes_by_variant(predictions, variants)
    names = list(outcomes)
    summaries = {v: variant_summary(list(outcomes[v].values()), level=level, resamples=resamples, seed=seed) for v in names}
    pairs = [p for a, b in combinations(names, 2) if (p := pair_summary(a, b, outcomes)) is not None]
    return {"level": level, "resamples": resamples, "variants": summaries, "pairs": pairs}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def format_interval(summary: Mapping) -> str:
    """``97.0 % [94.5, 99.0]``."""
    low, high = summary["ci95"]
    return f"{_pct(summary['accuracy'])} % [{_pct(low)}, {_pct(high)}]"


def format_pair(pair: Mapping) -> str:
    """``DAMC vs NaiveMC: 8 right with DAMC alone, 3 with NaiveMC alone (of 200), McNemar p = 0.227``."""
    return (f"{pair['a']} vs {pair['b']}: {pair['only_a']} right with {pair['a']} alone, {pair['only_b']} with "
            f"{pair['b']} alone (of {pair['items']}), exact McNemar p = {format_p(pair['p_value'])}")


def format_p(p: float) -> str:
    return "1" if p >= 0.9995 else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def format_report(report: Mapping, *, pairs: str = "all", indent: str = "  ") -> list[str]:
    """Text lines: one per variant (accuracy and interval), then the pairs.

    ``pairs``: "all", "first" (each variant against the first, e.g. DAMC against the others) or "none".
    """
    if pairs not in ("all", "first", "none"):
        raise CompositionError(f"pairs={pairs!r}; expected all, first or none.")
    level = round(100 * report["level"])
    lines = [f"{indent}{name:<28} {format_interval(s)}  ({s['right']}/{s['items']}; {level} % bootstrap interval)"
             for name, s in report["variants"].items()]
    chosen = report["pairs"]
    if pairs == "first" and report["variants"]:
        first = next(iter(report["variants"]))
        chosen = [p for p in chosen if p["a"] == first]
    elif pairs == "none":
        chosen = []
    if chosen:
        lines.append(f"{indent}paired, on the same items:")
        lines += [f"{indent}  {format_pair(p)}" for p in chosen]
    return lines


def markdown_tables(report: Mapping, *, pairs: str = "all") -> list[str]:
    """The report as two Markdown tables (accuracy with interval; the pairs), for the Benchmark tab and docs."""
    level = round(100 * report["level"])
    lines = [f"| variant | accuracy | {level} % interval | right / items |", "|---|---|---|---|"]
    lines += [f"| {name} | {_pct(s['accuracy'])} % | {_pct(s['ci95'][0])}–{_pct(s['ci95'][1])} % | {s['right']} / {s['items']} |"
              for name, s in report["variants"].items()]
    chosen = report["pairs"] if pairs == "all" else [p for p in report["pairs"] if p["a"] == next(iter(report["variants"]), None)]
    if chosen:
        lines += ["", "| a | b | right with a alone | right with b alone | both | neither | exact McNemar p |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['a']} | {p['b']} | {p['only_a']} | {p['only_b']} | {p['both']} | {p['neither']} | {format_p(p['p_value'])} |"
                  for p in chosen]
    return lines
