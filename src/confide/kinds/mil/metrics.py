"""Slide-level metrics of a MIL model's class probabilities."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def slide_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """accuracy, balanced accuracy (mean recall over the classes present) and, for two classes, the AUC of the
    positive class's probability (NaN when the labels hold only one class)."""
    predicted = probs.argmax(axis=1)
    recalls = [float((predicted[labels == c] == c).mean()) for c in np.unique(labels)]
    out = {"accuracy": float((predicted == labels).mean()), "balanced_accuracy": float(np.mean(recalls))}
    if probs.shape[1] == 2:
        positive = labels == 1
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        ranks = rankdata(probs[:, 1])
        auc = (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg) if n_pos and n_neg else np.nan
        out["auc"] = float(auc)
    return out
