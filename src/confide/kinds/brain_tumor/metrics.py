"""Segmentation metrics as pure numpy functions."""

from __future__ import annotations

import numpy as np

REGIONS: tuple[str, ...] = ("wt", "tc", "et")


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (nothing to find, nothing found)."""
    pred = pred.astype(bool, copy=False)
    truth = truth.astype(bool, copy=False)
    denominator = int(pred.sum()) + int(truth.sum())
    if denominator == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / denominator


def region_dice(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice per BraTS region for (3, ...) boolean region masks, plus their mean."""
    if pred.shape != truth.shape or pred.shape[0] != len(REGIONS):
        raise ValueError(f"expected two (3, ...) region masks of one shape, got {pred.shape} and {truth.shape}")
    scores = {f"dice_{name}": dice(pred[i], truth[i]) for i, name in enumerate(REGIONS)}
    scores["dice_mean"] = float(np.mean(list(scores.values())))
    return scores
