"""The image task's metrics from class probabilities, as pure numpy functions.

- ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present in the truth) and ``kappa`` (Cohen's
  kappa with quadratic weights, for ordinal classes only) from :mod:`confide.tasks.class_metrics`;
- ``auc``: the macro one-vs-rest AUC, the mean over classes of the AUC of "this class against the rest" scored by
  its probability; a class absent from the truth (or the truth's only class) has no such AUC and is left out, and
  with one class in the truth the AUC is NaN (undefined, shown as such in the report). With two classes it is the
  plain AUC;
- ``loss``: the mean cross-entropy of the true classes;
- ``recall_<class>``: each class's recall, NaN for a class absent from the truth.

The headline is the kappa for ordinal classes and the balanced accuracy otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from confide.tasks.class_metrics import accuracy, balanced_accuracy, binary_auc, per_class_recall, quadratic_kappa


def metric_keys(ordinal: bool) -> tuple[str, ...]:
    """The metrics every evaluation returns, the headline first."""
    if ordinal:
        return ("kappa", "balanced_accuracy", "accuracy", "auc")
    return ("balanced_accuracy", "accuracy", "auc")


def macro_auc(truth: np.ndarray, probs: np.ndarray) -> float:
    """The mean one-vs-rest AUC over the classes with both positives and negatives in ``truth``; NaN if none."""
    t = np.asarray(truth).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != t.size:
        raise ValueError(f"probabilities must be (cases, classes) for {t.size} cases, got {p.shape}")
    aucs = [binary_auc((t == k).astype(np.int64), p[:, k]) for k in range(p.shape[1])]
    defined = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(defined)) if defined else float("nan")


def image_scores(truth: np.ndarray, probs: np.ndarray, classes: Sequence[str], *, ordinal: bool) -> dict[str, float]:
    """Every metric of :func:`metric_keys` and the extras (loss, recall per class) for ``probs`` (cases, classes)."""
    k = len(classes)
    t = np.asarray(truth, dtype=np.int64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (t.size, k):
        raise ValueError(f"probabilities must be ({t.size}, {k}), got {p.shape}")
    pred = p.argmax(axis=1)
    recall = per_class_recall(t, pred, k)
    scores: dict[str, float] = {
        "balanced_accuracy": balanced_accuracy(t, pred, k),
        "accuracy": accuracy(t, pred, k),
        "auc": macro_auc(t, p),
        "loss": float(-np.mean(np.log(np.clip(p[np.arange(t.size), t], 1e-12, 1.0)))),
    }
    if ordinal:
        scores["kappa"] = quadratic_kappa(t, pred, k)
    for index, name in enumerate(classes):
        scores[f"recall_{name}"] = recall.get(index, float("nan"))
    return scores
