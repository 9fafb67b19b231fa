"""Metrics and the survival loss of the clinical-table task, as pure functions.

- :func:`table_scores`: every metric of :data:`METRIC_KEYS` for a kind, from the model's outputs: binary accuracy,
  balanced accuracy and ROC AUC (a logit above 0 is positive); multiclass accuracy, balanced accuracy and Cohen's
  kappa (the largest logit); survival Harrell's C-index and the Cox loss of the rows.

- :func:`c_index`: Harrell's concordance. A pair (i, j) is comparable when ``time_i < time_j`` and ``i`` had the
  event (pairs with equal times are not comparable, nor those whose earlier time is censored). It is concordant when
  the earlier one has the higher risk score; a tie in risk counts 1/2. NaN when no pair is comparable.
- :func:`cohen_kappa`: Cohen's (unweighted) kappa for nominal classes.
- :func:`cox_loss`: the negative Cox partial log-likelihood with Breslow's handling of tied times (every patient
  whose time is at least ``time_i`` is in the risk set of ``i``), averaged over the events; 0 without events.
"""

from __future__ import annotations

import numpy as np
import torch

from confide.tasks.class_metrics import accuracy, balanced_accuracy, binary_auc, confusion_matrix

METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "binary": ("accuracy", "balanced_accuracy", "auc"),
    "multiclass": ("accuracy", "balanced_accuracy", "cohen_kappa"),
    "survival": ("c_index", "cox_loss"),
}


def c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C for risk scores (higher = earlier event); see the module's docstring for the pairs counted."""
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event, dtype=np.float64).reshape(-1)
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    if not (t.shape == e.shape == r.shape) or t.size == 0:
        raise ValueError(f"time, event and risk must be non-empty and of one length, got {t.size}, {e.size}, {r.size}")
    if not (np.isfinite(t).all() and np.isfinite(r).all()):
        raise ValueError("times and risk scores must be finite")
    if not np.isin(e, (0.0, 1.0)).all():
        raise ValueError("events must be 1 (event) or 0 (censored)")
    comparable = concordant = 0.0
    for start in range(0, t.size, 1024):  # blocks of rows keep memory at 1024 x n
        ti, ei, ri = t[start : start + 1024, None], e[start : start + 1024, None], r[start : start + 1024, None]
        pairs = (ti < t[None, :]) & (ei == 1.0)
        comparable += float(pairs.sum())
        concordant += float((pairs & (ri > r[None, :])).sum()) + 0.5 * float((pairs & (ri == r[None, :])).sum())
    return concordant / comparable if comparable else float("nan")


def cohen_kappa(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """``(p_o - p_e) / (1 - p_e)``; when ``p_e == 1`` (one class everywhere) 1.0 if all agree, else 0.0."""
    observed = confusion_matrix(truth, pred, n_classes).astype(np.float64)
    n = observed.sum()
    agreement = float(np.trace(observed) / n)
    chance = float((observed.sum(axis=1) * observed.sum(axis=0)).sum() / n**2)
    if chance >= 1.0:
        return 1.0 if agreement >= 1.0 else 0.0
    return (agreement - chance) / (1.0 - chance)


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Mean over events of ``log(sum_{j: t_j >= t_i} exp(r_j)) - r_i`` (Breslow), differentiable in ``risk``."""
    risk = risk.reshape(-1)
    order = torch.argsort(time.reshape(-1), descending=True, stable=True)
    r, t, e = risk[order], time.reshape(-1)[order], event.reshape(-1)[order]
    cumulative = torch.logcumsumexp(r, dim=0)  # log sum of exp(r) over the patients up to here (latest first)
    last_tied = torch.searchsorted(-t.contiguous(), -t.contiguous(), right=True) - 1  # ties share one risk set
    events = e.sum()
    if float(events) == 0.0:
        return (r * 0.0).sum()
    return ((cumulative[last_tied] - r) * e).sum() / events


def table_scores(kind: str, outputs: torch.Tensor, y: np.ndarray, classes: int = 2) -> dict[str, float]:
    """Every metric of ``METRIC_KEYS[kind]`` for the model's ``outputs`` (n, k) on rows whose targets are ``y``
    (binary (n,) 0/1, multiclass (n,) class indices, survival (n, 2) time and event)."""
    if kind == "survival":
        times, target = np.asarray(y, dtype=np.float64), torch.from_numpy(np.asarray(y, dtype=np.float32))
        loss = float(cox_loss(outputs, target[:, 0], target[:, 1]))
        return {"c_index": c_index(times[:, 0], times[:, 1], outputs[:, 0].numpy()), "cox_loss": loss}
    truth = np.asarray(y).astype(np.int64)
    if kind == "binary":
        logit = outputs[:, 0].numpy()
        pred = (logit > 0).astype(np.int64)
        return {
            "accuracy": accuracy(truth, pred, 2),
            "balanced_accuracy": balanced_accuracy(truth, pred, 2),
            "auc": binary_auc(truth, logit),
        }
    if kind != "multiclass":
        raise ValueError(f"a table task is binary, multiclass or survival, not {kind!r}")
    pred = outputs.argmax(dim=1).numpy().astype(np.int64)
    return {
        "accuracy": accuracy(truth, pred, classes),
        "balanced_accuracy": balanced_accuracy(truth, pred, classes),
        "cohen_kappa": cohen_kappa(truth, pred, classes),
    }
