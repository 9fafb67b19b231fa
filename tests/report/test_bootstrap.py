"""Bootstrap intervals, Kaplan-Meier curves and ROC points: the report's math, checked against known answers."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from confide.report.bootstrap import percentile_interval
from confide.report.kaplan_meier import kaplan_meier, risk_groups
from confide.report.prediction_plots import roc_points


def _mean_of(values: np.ndarray) -> Callable[[np.ndarray], float]:
    return lambda idx: float(values[idx].mean())


def test_an_interval_holds_its_value_and_narrows_as_the_split_grows() -> None:
    rng = np.random.default_rng(0)
    small = rng.random(15) < 0.7
    large = rng.random(1500) < 0.7

    a = percentile_interval(_mean_of(small.astype(float)), small.size, np.random.default_rng(1))
    b = percentile_interval(_mean_of(large.astype(float)), large.size, np.random.default_rng(1))

    assert a.low <= a.value <= a.high and b.low <= b.value <= b.high
    assert a.value == pytest.approx(small.mean()) and a.n == 15 and a.resamples == 1000
    assert (a.high - a.low) > 5 * (b.high - b.low)  # about sqrt(100) = 10 times wider
    assert (a.high - a.low) > 0.3  # a 15-patient split is far from exact


def test_the_same_seed_gives_the_same_interval_and_another_seed_another() -> None:
    values = np.linspace(0.0, 1.0, 20)

    first = percentile_interval(_mean_of(values), 20, np.random.default_rng(7))
    again = percentile_interval(_mean_of(values), 20, np.random.default_rng(7))
    other = percentile_interval(_mean_of(values), 20, np.random.default_rng(8))

    assert first == again
    assert (first.low, first.high) != (other.low, other.high)


def test_a_percentile_interval_matches_the_percentiles_of_the_resampled_means() -> None:
    values = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    draws = np.random.default_rng(3)
    expected = [values[draws.integers(0, 8, size=8)].mean() for _ in range(200)]

    got = percentile_interval(_mean_of(values), 8, np.random.default_rng(3), resamples=200)

    assert got.low == pytest.approx(np.percentile(expected, 2.5))
    assert got.high == pytest.approx(np.percentile(expected, 97.5))


def test_undefined_resamples_are_left_out_and_too_few_examples_give_no_interval() -> None:
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 1])  # most resamples lack the positive class

    def needs_both(idx: np.ndarray) -> float:
        return float(labels[idx].mean()) if 0 < labels[idx].sum() < len(idx) else math.nan

    sparse = percentile_interval(needs_both, 8, np.random.default_rng(0))
    one = percentile_interval(lambda idx: 1.0, 1, np.random.default_rng(0))

    assert 0 < sparse.defined < sparse.resamples
    assert one.value == 1.0 and math.isnan(one.low) and math.isnan(one.high) and one.resamples == 0
    assert one.as_dict()["low"] is None


def test_kaplan_meier_gives_the_textbook_steps() -> None:
    # times 1, 2 (censored), 3, 3, 4 (censored): at 1, 1 of 5 dies; at 3, 2 of 3
    time = np.array([1.0, 2.0, 3.0, 3.0, 4.0])
    event = np.array([1.0, 0.0, 1.0, 1.0, 0.0])

    t, s = kaplan_meier(time, event)

    assert t.tolist() == [0.0, 1.0, 3.0]
    assert s == pytest.approx([1.0, 0.8, 0.8 * (1 - 2 / 3)])


def test_kaplan_meier_refuses_bad_events_and_risk_groups_split_at_the_median() -> None:
    with pytest.raises(ValueError, match="events"):
        kaplan_meier(np.array([1.0, 2.0]), np.array([1.0, 2.0]))

    high = risk_groups(np.array([0.1, 0.5, 0.9, 0.3]))

    assert high.tolist() == [False, True, True, False]


def test_roc_points_run_from_the_corner_to_the_corner_and_ties_make_one_step() -> None:
    truth = np.array([1, 1, 0, 0])

    fpr, tpr = roc_points(truth, np.array([0.9, 0.5, 0.5, 0.1]))
    absent_fpr, _ = roc_points(np.array([1, 1]), np.array([0.2, 0.3]))

    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert absent_fpr.size == 0


def test_per_example_scores_give_the_interval_the_metric_gives_resample_by_resample() -> None:
    hits = (np.random.default_rng(3).random(40) < 0.7).astype(np.float64)

    def mean_of(indices: np.ndarray) -> float:
        return float(hits[indices].mean())

    one_by_one = percentile_interval(mean_of, 40, np.random.default_rng(0), resamples=4000)
    at_once = percentile_interval(mean_of, 40, np.random.default_rng(0), resamples=4000, per_example=hits)

    assert at_once.value == one_by_one.value == hits.mean()
    assert at_once.defined == at_once.resamples == 4000
    assert abs(at_once.low - one_by_one.low) <= 0.03 and abs(at_once.high - one_by_one.high) <= 0.03
    assert at_once.low < hits.mean() < at_once.high
