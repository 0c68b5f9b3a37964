"""Paired statistics for comparing two variants on the same items: an accuracy's bootstrap interval,
the right-alone counts and the exact McNemar test.

Two variants answered the same items, so their answers are paired: what tells them apart is
the items only one of them got right (the discordant pairs). McNemar's exact test asks how
likely a split at least this uneven is when each discordant item is a fair coin (a two-sided
binomial test with p = 1/2); items both got right or both got wrong say nothing about which
is better.

    ci = bootstrap_interval(damc_correct)                # (0.49, 0.63): 95 % percentile bootstrap
    pair = compare_paired(damc_correct, shared_correct)  # pair.only_a, pair.only_b, pair.p_value
    mcnemar_exact(28, 13)                                # 0.0275...

Pure Python and numpy; ``mcnemar_exact`` is exact integer arithmetic (no normal approximation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..errors import CompositionError

DEFAULT_LEVEL = 0.95
DEFAULT_RESAMPLES = 10_000


def _as_outcomes(values: Sequence, what: str) -> list[bool]:
    """A sequence of right/wrong outcomes (bools, or 0/1), refused by name when it is anything else."""
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool):
            out.append(v)
        elif isinstance(v, int) and v in (0, 1):
            out.append(bool(v))
        else:
            raise CompositionError(f"{what}[{i}] is {v!r}; expected True/False (or 1/0): one outcome per item.")
    if not out:
        raise CompositionError(f"{what} is empty; give one right/wrong outcome per item.")
    return out


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise CompositionError(f"level={level!r}; expected a confidence level between 0 and 1, e.g. 0.95.")
    return float(level)


def _check_resamples(resamples: int) -> int:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise CompositionError(f"resamples={resamples!r}; expected an integer of at least 100 (default {DEFAULT_RESAMPLES}).")
    return resamples


def bootstrap_interval(correct: Sequence, *, level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of an accuracy.

    Args:
        correct: one outcome per item (True = right).
        level: the interval's coverage (0.95: the 2.5th and 97.5th percentiles of the resampled means).
        resamples: bootstrap resamples (items drawn with replacement, as many as there are).
        seed: the generator's seed (the same outcomes and seed give the same interval).
    Returns:
        (low, high), accuracies in [0, 1]. All right (or all wrong) gives a zero-width interval.
    """
    import numpy as np

    outcomes = np.asarray(_as_outcomes(correct, "correct"), dtype=np.float64)
    level, resamples = _check_level(level), _check_resamples(resamples)
    rng = np.random.default_rng(seed)
    # Each resample's mean is a Binomial(n, p̂) count over n: drawing counts is the same distribution
    # as drawing n items with replacement, and costs one number per resample.
    n = outcomes.size
    means = rng.binomial(n, outcomes.mean(), size=resamples) / n
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_difference(a: Sequence, b: Sequence, *, level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES,
                         seed: int = 0) -> tuple[float, float]:
    """The paired percentile bootstrap interval of accuracy(a) − accuracy(b) on the same items
    (items resampled together, so each resample keeps the pairs)."""
    import numpy as np

    a_, b_ = _paired(a, b)
    level, resamples = _check_level(level), _check_resamples(resamples)
    diff = np.asarray(a_, dtype=np.float64) - np.asarray(b_, dtype=np.float64)  # -1, 0 or 1 per item
    n = diff.size
    # Only the per-item difference matters: resample the counts of (+1, 0, -1) items (a multinomial draw).
    probs = [float((diff == 1).mean()), float((diff == 0).mean()), float((diff == -1).mean())]
    counts = np.random.default_rng(seed).multinomial(n, probs, size=resamples)
    means = (counts[:, 0] - counts[:, 2]) / n
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """The exact two-sided McNemar p-value of a paired comparison.

    Args:
        only_a: items variant a got right and b got wrong.
        only_b: items b got right and a got wrong.
    Returns:
        min(1, 2·P(X ≤ min(only_a, only_b))) for X ~ Binomial(only_a + only_b, 1/2); 1.0 when there
        is no discordant item (nothing tells the two apart).
    """
    for name, value in (("only_a", only_a), ("only_b", only_b)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CompositionError(f"{name}={value!r}; expected a count of items (an integer ≥ 0).")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2 ** n)


@dataclass(frozen=True)
class PairedComparison:
    """Two variants on the same items: how many each got right alone, and the exact McNemar p-value."""

    both: int  # right with both
    only_a: int  # right with a alone
    only_b: int  # right with b alone
    neither: int  # wrong with both
    p_value: float

    @property
    def n(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither

    @property
    def difference(self) -> float:
        """accuracy(a) − accuracy(b)."""
        return (self.only_a - self.only_b) / self.n

    def to_json(self) -> dict:
        return {"both": self.both, "only_a": self.only_a, "only_b": self.only_b, "neither": self.neither,
                "difference": round(self.difference, 4), "p_value": self.p_value}


def _paired(a: Sequence, b: Sequence) -> tuple[list[bool], list[bool]]:
    a_, b_ = _as_outcomes(a, "a"), _as_outcomes(b, "b")
    if len(a_) != len(b_):
        raise CompositionError(f"paired outcomes need the same items: a has {len(a_)}, b has {len(b_)}.")
    return a_, b_


def compare_paired(a: Sequence, b: Sequence) -> PairedComparison:
    """Count the four kinds of paired outcome (item i of ``a`` and of ``b`` is the same item) and test them."""
    a_, b_ = _paired(a, b)
    both = sum(x and y for x, y in zip(a_, b_))
    only_a = sum(x and not y for x, y in zip(a_, b_))
    only_b = sum(y and not x for x, y in zip(a_, b_))
    return PairedComparison(both, only_a, only_b, len(a_) - both - only_a - only_b, mcnemar_exact(only_a, only_b))
