"""Empirical lower bounds on epsilon from what an attack got right, and the check that they stay under the ledger's.

A differentially private mechanism limits how often any attack can be right about one person; an attack that is
right more often than the limit allows proves that the mechanism is not (epsilon, delta)-DP for that epsilon. These
functions turn an attack's record into the largest epsilon it rules out, at a stated confidence. Such a bound is a
*lower* bound on the true epsilon; the ledger's epsilon (:mod:`confide.privacy.ledger`) is an *upper* bound. A lower
bound above the upper bound is impossible unless the accounting, the mechanism or the audit is wrong: it is a bug.

- :func:`one_run_epsilon`: membership of canaries, each included with probability 1/2, guessed for the ``r``
  canaries the attack is surest about (Steinke, Nasr & Jagielski 2023, "Privacy auditing with one (1) training
  run", Theorem 3.1 and its delta term). Neighbouring datasets differ by adding or removing one record.
- :func:`identification_epsilon`: which of ``n`` equally likely candidate records was the one trained on, right
  in ``successes`` of ``trials`` independent trials (the informed adversary of Balle, Cherubin & Hayes 2022 and
  Hayes, Mahloujifar & Balle 2023). Candidates replace one another, so the bound is first obtained under replacement
  and converted to add-or-remove neighbours by group privacy (replacement is a removal and an addition).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
MAX_EPSILON = 50.0


def _check_counts(correct: int, guesses: int) -> None:
    if not 0 <= correct <= guesses:
        raise ValueError(f"correct guesses must be between 0 and the number of guesses, got {correct} of {guesses}")


def one_run_p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Probability that an (epsilon, delta)-DP mechanism lets ``correct`` or more of ``guesses`` membership guesses
    be right, among ``canaries`` canaries each included independently with probability 1/2 (Steinke et al. 2023):
    ``P[Binomial(r, q) >= v] + 2 m delta max_i P[v - i <= Binomial(r, q) < v] / i`` with ``q = e^eps / (1 + e^eps)``.
    """
    _check_counts(correct, guesses)
    if guesses > canaries:
        raise ValueError(f"{guesses} guesses about {canaries} canaries")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"epsilon must be >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(correct - 1, guesses, q))
    if delta == 0 or correct == 0:
        return min(1.0, tail)
    below = stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, q)  # P[B = v-1], P[B = v-2], ..., P[B = 0]
    ratios = np.cumsum(below) / np.arange(1, correct + 1)
    return min(1.0, tail + 2.0 * canaries * delta * float(ratios.max()))


def _largest_rejected(p_value: Callable[[float], float], level: float) -> float:
    """The largest epsilon whose null hypothesis ``p_value(eps) < level`` still rejects (0 when none does)."""
    if p_value(0.0) >= level:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(high) < level:
        low, high = high, high * 2
        if high > MAX_EPSILON:
            return MAX_EPSILON
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if p_value(mid) < level else (low, mid)
    return low


def one_run_epsilon(
    canaries: int, guesses: int, correct: int, delta: float, *, confidence: float = CONFIDENCE, tests: int = 1
) -> float:
    """The largest epsilon that ``correct`` right guesses out of ``guesses`` rule out at ``confidence`` (0 when the
    record is consistent with epsilon 0). ``tests``: how many guess counts were tried on the same run; each is held
    to ``(1 - confidence) / tests`` (Bonferroni), so picking the best of them keeps the stated confidence."""
    if not 0 < confidence < 1 or tests < 1:
        raise ValueError(f"confidence must be in (0, 1) and tests >= 1, got {confidence}, {tests}")
    level = (1.0 - confidence) / tests
    return _largest_rejected(lambda eps: one_run_p_value(canaries, guesses, correct, eps, delta), level)


@dataclass(frozen=True)
class Guesses:
    """What a one-run membership attack guessed: ``guesses`` canaries named in or out, ``correct`` of them right."""

    guesses: int
    correct: int


def top_bottom_guesses(scores: np.ndarray, included: np.ndarray, k_in: int, k_out: int) -> Guesses:
    """Guess "in" for the ``k_in`` highest scores and "out" for the ``k_out`` lowest; abstain on the rest. Ties are
    broken by position, which the attack does not choose (canaries are in random order)."""
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    if scores.shape != included.shape or scores.ndim != 1:
        raise ValueError(f"one score per canary: {scores.shape} scores, {included.shape} memberships")
    if k_in < 0 or k_out < 0 or k_in + k_out > scores.size:
        raise ValueError(f"cannot guess {k_in} in and {k_out} out of {scores.size} canaries")
    order = np.argsort(scores, kind="stable")
    named_out = order[:k_out]
    named_in = order[scores.size - k_in :] if k_in else order[:0]
    correct = int(included[named_in].sum()) + int((~included[named_out]).sum())
    return Guesses(k_in + k_out, correct)


def best_one_run_epsilon(
    scores: np.ndarray, included: np.ndarray, delta: float, *, counts: Sequence[int], confidence: float = CONFIDENCE
) -> tuple[float, Guesses]:
    """The best epsilon lower bound over guessing the top and bottom ``k`` for every ``k`` of ``counts`` (fixed
    before the run), with the Bonferroni correction for having tried them all; and the guesses that gave it."""
    valid = sorted({k for k in counts if 0 < 2 * k <= len(scores)})
    if not valid:
        raise ValueError(f"no guess count of {list(counts)} fits {len(scores)} canaries")
    tried = []
    for k in valid:
        guessed = top_bottom_guesses(scores, included, k, k)
        eps = one_run_epsilon(
            len(scores), guessed.guesses, guessed.correct, delta, confidence=confidence, tests=len(valid)
        )
        tried.append((eps, guessed))
    return max(tried, key=lambda pair: pair[0])  # the first of equals: the fewest guesses


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the ``positive`` labels (ties count one half); NaN without both."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = stats.rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def clopper_pearson_lower(successes: int, trials: int, confidence: float = CONFIDENCE) -> float:
    """One-sided lower confidence limit of a success probability (exact, Clopper and Pearson 1934)."""
    _check_counts(successes, trials)
    if successes == 0:
        return 0.0
    return float(stats.beta.ppf(1.0 - confidence, successes, trials - successes + 1))


def identification_limit(candidates: int, epsilon: float, delta: float) -> float:
    """The highest chance an attack has to name which of ``candidates`` equally likely records was trained on, for a
    mechanism (epsilon, delta)-DP under *replacement* of one record: ``(e^eps + (n - 1) delta) / (n - 1 + e^eps)``."""
    if candidates < 2:
        raise ValueError(f"identification needs at least 2 candidates, got {candidates}")
    grow = math.exp(min(epsilon, 700.0))
    return min(1.0, (grow + (candidates - 1) * delta) / (candidates - 1 + grow))


def identification_epsilon(
    successes: int, trials: int, candidates: int, delta: float, *, confidence: float = CONFIDENCE
) -> float:
    """The largest add-or-remove epsilon that ``successes`` right identifications in ``trials`` rule out at
    ``confidence``. A mechanism (eps, delta)-DP for adding or removing a record is (2 eps, (1 + e^eps) delta)-DP
    for replacing one (group privacy), which bounds the chance of success by :func:`identification_limit`."""
    rate = clopper_pearson_lower(successes, trials, confidence)
    level = 1.0 - confidence

    def p_value(eps: float) -> float:  # rejected (p < level) when the observed rate beats the limit
        return 0.0 if rate > identification_limit(candidates, 2 * eps, (1 + math.exp(eps)) * delta) else 1.0

    return _largest_rejected(p_value, level)


def violation(label: str, lower: float, upper: float, *, slack: float = 1e-9) -> str | None:
    """Why a row is a bug (its empirical lower bound exceeds the ledger's upper bound), or ``None``."""
    if math.isnan(lower) or math.isinf(upper) or math.isnan(upper):
        return None
    if lower > upper + slack:
        return (
            f"{label}: the attack proves epsilon >= {lower:.3g}, above the ledger's upper bound {upper:.3g}; the "
            "privacy accounting, the mechanism or the audit is wrong (a bug: report it)"
        )
    return None
