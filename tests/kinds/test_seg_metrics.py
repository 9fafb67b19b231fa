from __future__ import annotations

import numpy as np
import pytest

from confide.kinds.brain_tumor.metrics import dice, region_dice


def test_dice_hand_computed() -> None:
    pred = np.array([1, 1, 0, 0], bool)
    truth = np.array([1, 0, 1, 0], bool)

    assert dice(pred, truth) == pytest.approx(0.5)  # 2*1 / (2+2)


def test_dice_of_two_empty_masks_is_one_and_a_miss_is_zero() -> None:
    empty = np.zeros(5, bool)

    assert dice(empty, empty) == 1.0
    assert dice(empty, np.ones(5, bool)) == 0.0


def test_region_dice_names_regions_and_means_them() -> None:
    truth = np.zeros((3, 4), bool)
    truth[:, :2] = True
    pred = truth.copy()
    pred[2] = False  # ET missed entirely

    scores = region_dice(pred, truth)

    assert scores == {"dice_wt": 1.0, "dice_tc": 1.0, "dice_et": 0.0, "dice_mean": pytest.approx(2 / 3)}
    with pytest.raises(ValueError):
        region_dice(pred[:2], truth[:2])
