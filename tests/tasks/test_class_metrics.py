from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from confide.tasks.class_metrics import (
    accuracy,
    balanced_accuracy,
    binary_auc,
    confusion_matrix,
    per_class_recall,
    quadratic_kappa,
)


def test_confusion_matrix_and_accuracy_by_hand() -> None:
    truth = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 0, 2])

    cm = confusion_matrix(truth, pred, 3)

    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert accuracy(truth, pred, 3) == pytest.approx(4 / 6)


def test_recall_leaves_out_absent_classes_and_balanced_accuracy_averages_the_rest() -> None:
    truth = np.array([0, 0, 0, 2])  # class 1 absent from the truth
    pred = np.array([0, 1, 1, 2])

    recall = per_class_recall(truth, pred, 3)

    assert recall == {0: pytest.approx(1 / 3), 2: 1.0}
    assert balanced_accuracy(truth, pred, 3) == pytest.approx((1 / 3 + 1) / 2)


def test_quadratic_kappa_by_hand() -> None:
    # 2 classes: observed = [[1, 1], [0, 2]], n = 4; rows (2, 2), columns (1, 3)
    # expected = [[0.5, 1.5], [0.5, 1.5]]; weights 1 off the diagonal: kappa = 1 - 1 / 2 = 0.5
    truth = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])

    assert quadratic_kappa(truth, pred, 2) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_quadratic_kappa_matches_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, 50)
    pred = np.clip(truth + rng.integers(-2, 3, 50), 0, 3)

    ours = quadratic_kappa(truth, pred, 4)

    assert ours == pytest.approx(cohen_kappa_score(truth, pred, weights="quadratic", labels=[0, 1, 2, 3]))


def test_kappa_is_one_for_perfect_agreement_even_on_a_single_class() -> None:
    same = np.array([1, 1, 1])

    assert quadratic_kappa(same, same, 3) == 1.0  # 0/0 (scikit-learn gives nan): documented as 1


def test_kappa_is_zero_for_a_constant_wrong_prediction() -> None:
    assert quadratic_kappa(np.array([0, 0, 0]), np.array([2, 2, 2]), 3) == pytest.approx(0.0)


def test_kappa_penalises_far_errors_more_than_near_ones() -> None:
    truth = np.array([0, 1, 2, 0, 1, 2])

    near = quadratic_kappa(truth, np.array([1, 1, 2, 0, 1, 2]), 3)
    far = quadratic_kappa(truth, np.array([2, 1, 2, 0, 1, 2]), 3)

    assert far < near < 1.0


def test_binary_auc_by_hand_and_against_scikit_learn() -> None:
    truth = np.array([0, 0, 1, 1, 0, 1])
    score = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.4])  # ties between classes count half

    # positives 0.35, 0.8, 0.4 against negatives 0.1, 0.4, 0.4: wins 1+3+(1 + 2 halves) = 6 of 9
    assert binary_auc(truth, score) == pytest.approx(6 / 9)
    assert binary_auc(truth, score) == pytest.approx(roc_auc_score(truth, score))


def test_binary_auc_is_nan_with_one_class() -> None:
    assert math.isnan(binary_auc(np.array([1, 1]), np.array([0.2, 0.9])))


@pytest.mark.parametrize(
    ("truth", "pred", "match"),
    [
        (np.array([0, 1]), np.array([0]), "length"),
        (np.array([0, 3]), np.array([0, 1]), "outside"),
        (np.array([0.0, 1.0]), np.array([0, 1]), "integer"),
        (np.array([], dtype=int), np.array([], dtype=int), "no cases"),
    ],
)
def test_bad_inputs_are_refused(truth: np.ndarray, pred: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        accuracy(truth, pred, 3)
