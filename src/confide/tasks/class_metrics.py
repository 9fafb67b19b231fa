"""Classification metrics as pure numpy functions (labels are integer class indices ``0 .. n_classes - 1``).

Conventions where a metric is undefined:

- :func:`per_class_recall` leaves out a class absent from the truth (its recall is 0/0); it never returns NaN.
  :func:`balanced_accuracy` is the mean recall over the classes present in the truth (as scikit-learn computes it).
- :func:`quadratic_kappa`: when the expected disagreement is zero (truth and prediction both put every case in one and
  the same class) Cohen's kappa is 0/0. It returns 1.0 when the observed agreement is perfect (which is then always
  the case) and 0.0 otherwise; scikit-learn returns NaN there.
- :func:`binary_auc` returns NaN when the truth holds a single class (no pair of cases to rank).
"""

from __future__ import annotations

import numpy as np


def _check(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(truth).reshape(-1)
    p = np.asarray(pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"truth and prediction differ in length: {t.size} and {p.size}")
    if t.size == 0:
        raise ValueError("no cases to score")
    if n_classes < 2:
        raise ValueError(f"at least 2 classes are needed, got {n_classes}")
    for name, values in (("truth", t), ("prediction", p)):
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class indices, got dtype {values.dtype}")
        if values.min() < 0 or values.max() >= n_classes:
            raise ValueError(f"{name} holds a class index outside 0..{n_classes - 1}")
    return t.astype(np.int64), p.astype(np.int64)


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    t, p = _check(truth, pred, n_classes)
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def accuracy(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    t, p = _check(truth, pred, n_classes)
    return float(np.mean(t == p))


def per_class_recall(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[int, float]:
    """Recall of each class present in the truth (absent classes are left out, see the module's docstring)."""
    cm = confusion_matrix(truth, pred, n_classes)
    support = cm.sum(axis=1)
    return {k: float(cm[k, k] / support[k]) for k in range(n_classes) if support[k] > 0}


def balanced_accuracy(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in the truth."""
    return float(np.mean(list(per_class_recall(truth, pred, n_classes).values())))


def quadratic_kappa(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Cohen's kappa with quadratic weights ``(i - j)^2 / (K - 1)^2`` over the ordinal classes 0..K-1."""
    observed = confusion_matrix(truth, pred, n_classes).astype(np.float64)
    n = observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / n
    idx = np.arange(n_classes, dtype=np.float64)
    weights = (idx[:, None] - idx[None, :]) ** 2 / (n_classes - 1) ** 2
    disagreement_expected = float((weights * expected).sum())
    disagreement_observed = float((weights * observed).sum())
    if disagreement_expected <= 0.0:
        return 1.0 if disagreement_observed <= 0.0 else 0.0
    return 1.0 - disagreement_observed / disagreement_expected


def binary_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve for binary truth (0/1) and a real score, ties counted half (Mann-Whitney U)."""
    t = np.asarray(truth).reshape(-1)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if t.shape != s.shape or t.size == 0:
        raise ValueError(f"truth and score must be non-empty and of one length, got {t.size} and {s.size}")
    if not np.isin(t, (0, 1)).all():
        raise ValueError("binary AUC needs truth in {0, 1}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    positives = int(t.sum())
    negatives = t.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_scores = s[order]
    # average ranks (1-based) over ties
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], s.size]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[t == 1].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))
