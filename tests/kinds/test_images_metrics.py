"""The image task's metrics: quadratic kappa against a hand-computed case, macro AUC, the headline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from confide.kinds.images.metrics import image_scores, macro_auc, metric_keys

TRUTH = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.6, 0.3, 0.1],
        [0.3, 0.3, 0.4],
        [0.2, 0.5, 0.3],
        [0.1, 0.2, 0.7],
        [0.5, 0.4, 0.1],
    ]
)


def test_quadratic_kappa_matches_a_hand_computed_case() -> None:
    # Predictions (the argmax of PROBS): 0, 0, 2, 1, 2, 0. Counts (row truth, column prediction):
    # [[2,0,0],[0,1,1],[1,0,1]]; weights (i-j)^2 / (3-1)^2 = 0, 1/4, 1.
    # Observed disagreement: truth 1 predicted 2 (1/4) + truth 2 predicted 0 (1) = 1.25.
    # Expected counts: row sums (2,2,2) times column sums (3,1,2) over 6 = rows of (1, 1/3, 2/3);
    # disagreement: row 0: 1/4*1/3 + 1*2/3 = 0.75; row 1: 1/4*1 + 1/4*2/3 = 5/12; row 2: 1*1 + 1/4*1/3 = 13/12;
    # total 2.25, so kappa = 1 - 1.25 / 2.25 = 4/9.
    scores = image_scores(TRUTH, PROBS, ["0", "1", "2"], ordinal=True)

    assert scores["kappa"] == pytest.approx(4 / 9)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["balanced_accuracy"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert scores["recall_0"] == 1.0 and scores["recall_2"] == 0.5


def test_macro_auc_is_the_mean_one_vs_rest_auc() -> None:
    # class 0: every positive above every negative (1); class 1: 6.5 of 8 pairs (one tie); class 2: 5 of 8 pairs
    assert macro_auc(TRUTH, PROBS) == pytest.approx((1 + 6.5 / 8 + 5 / 8) / 3)


def test_macro_auc_leaves_out_an_absent_class_and_is_nan_with_one_class() -> None:
    two_present = macro_auc(TRUTH[:4], PROBS[:4])
    one_class = macro_auc(np.zeros(3, dtype=np.int64), PROBS[:3])

    assert two_present == pytest.approx((1 + 3.5 / 4) / 2)  # class 2 has no positive: left out, not counted as 0.5
    assert math.isnan(one_class)


def test_the_headline_is_kappa_for_ordinal_classes_and_balanced_accuracy_otherwise() -> None:
    nominal = image_scores(TRUTH, PROBS, ["x", "y", "z"], ordinal=False)

    assert metric_keys(True)[0] == "kappa"
    assert metric_keys(False)[0] == "balanced_accuracy"
    assert "kappa" not in nominal and set(metric_keys(False)) <= set(nominal)
    assert nominal["loss"] == pytest.approx(-np.mean(np.log(PROBS[np.arange(6), TRUTH])))
