"""The Kaplan-Meier estimate of survival, and risk groups split at the median risk, as pure functions."""

from __future__ import annotations

import numpy as np


def kaplan_meier(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The estimate as a step function: times ``t`` (starting at 0) and survival ``s`` (starting at 1), where
    ``s[k]`` holds from ``t[k]`` until the next time. At each distinct event time, survival is multiplied by
    ``1 - deaths / at risk``; censored patients leave the risk set after their time (a tie of an event and a
    censoring counts the censored patient as still at risk)."""
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event, dtype=np.float64).reshape(-1)
    if t.shape != e.shape:
        raise ValueError(f"time and event must be of one length, got {t.size} and {e.size}")
    if t.size and (not np.isfinite(t).all() or t.min() < 0 or not np.isin(e, (0.0, 1.0)).all()):
        raise ValueError("times must be finite and >= 0, events 1 (event) or 0 (censored)")
    times, survival = [0.0], [1.0]
    s = 1.0
    for u in np.unique(t[e == 1.0]):
        at_risk = int(np.count_nonzero(t >= u))
        deaths = int(np.count_nonzero((t == u) & (e == 1.0)))
        s *= 1.0 - deaths / at_risk
        times.append(float(u))
        survival.append(s)
    return np.array(times), np.array(survival)


def risk_groups(risk: np.ndarray) -> np.ndarray:
    """True for the high-risk group: a risk above the median (ties at the median go to the low group)."""
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    if r.size == 0:
        return np.zeros(0, dtype=bool)
    return r > np.median(r)
