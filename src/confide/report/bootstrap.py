"""Percentile bootstrap intervals of a metric over the examples of a test split, as pure functions.

A test split of 15 patients scored 0.733 says little without its spread: :func:`percentile_interval` resamples the
split's examples with replacement (``resamples`` times, from a generator seeded by the caller, so the report
reproduces), recomputes the metric on each resample, and takes the 2.5th and 97.5th percentiles (for a 95 %
interval) of the values that are defined (a resample with one class has no AUC, one without a comparable pair no
C-index: such resamples are left out, and counted).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
MIN_EXAMPLES = 5
"""Below this many examples no interval is given: resampling two or three cases only reshuffles them, and the
percentile interval it gives is far narrower than the truth."""


@dataclass(frozen=True)
class Interval:
    """A metric on a split and its percentile bootstrap interval; NaN bounds where it cannot be given."""

    value: float
    low: float
    high: float
    n: int
    resamples: int  # resamples drawn
    defined: int  # resamples where the metric was defined
    level: float = LEVEL

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready: NaN as None."""

        def clean(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "value": clean(self.value),
            "low": clean(self.low),
            "high": clean(self.high),
            "n": self.n,
            "level": self.level,
            "resamples": self.resamples,
            "defined_resamples": self.defined,
        }


def percentile_interval(
    metric: Callable[[np.ndarray], float],
    n: int,
    rng: np.random.Generator,
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    min_examples: int = MIN_EXAMPLES,
    per_example: np.ndarray | None = None,
) -> Interval:
    """``metric`` on all ``n`` examples and its percentile bootstrap interval at ``level``. ``metric(indices)``
    scores the examples at ``indices`` (repeats allowed). Where the metric is the mean of a score per example,
    ``per_example`` holds those scores and the resamples' means are taken a block at a time (resampled the same
    way, about a hundred times faster). Fewer than ``min_examples`` examples, or fewer than half the resamples
    defined, give NaN bounds."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    value = float(metric(np.arange(n))) if n else math.nan
    if n < max(min_examples, 2):
        return Interval(value, math.nan, math.nan, n, 0, 0, level)
    if per_example is None:
        values = np.array([metric(rng.integers(0, n, size=n)) for _ in range(resamples)], dtype=np.float64)
    else:
        values = _resampled_means(np.asarray(per_example, dtype=np.float64), resamples, rng)
    defined = values[np.isfinite(values)]
    if defined.size < resamples / 2:
        return Interval(value, math.nan, math.nan, n, resamples, int(defined.size), level)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(defined, [tail, 100.0 - tail])
    return Interval(value, float(low), float(high), n, resamples, int(defined.size), level)


def _resampled_means(scores: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The mean of ``scores`` over each of ``resamples`` resamples of n indices with replacement, a block of
    resamples at a time (at most about a million indices)."""
    n = scores.size
    block = max(1, (1 << 20) // n)
    out = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        out[start : start + rows] = scores[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    return out
