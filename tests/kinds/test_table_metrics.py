from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score

from confide.kinds.tables.metrics import c_index, cohen_kappa, cox_loss


def _brute_c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    num = den = 0.0
    for i in range(len(time)):
        for j in range(len(time)):
            if time[i] < time[j] and event[i] == 1:
                den += 1
                num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return num / den


def test_c_index_hand_cases() -> None:
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 1, 1, 1])

    assert c_index(time, event, np.array([4.0, 3.0, 2.0, 1.0])) == 1.0  # the earliest has the highest risk
    assert c_index(time, event, np.array([1.0, 2.0, 3.0, 4.0])) == 0.0
    assert c_index(time, event, np.zeros(4)) == 0.5  # every risk tied: each pair counts 1/2
    # one tie among the 6 pairs (1 vs 2), the others concordant: (5 + 0.5) / 6
    assert c_index(time, event, np.array([3.0, 3.0, 2.0, 1.0])) == pytest.approx(5.5 / 6)


def test_c_index_counts_only_pairs_whose_earlier_time_is_an_event() -> None:
    # patient 0 censored at 1: pairs (0, 1) and (0, 2) are not comparable; (1, 2) is, and discordant.
    # equal times (1 and 3 both at 2.0) are not comparable either
    time = np.array([1.0, 2.0, 5.0, 2.0])
    event = np.array([0, 1, 1, 1])
    risk = np.array([9.0, 0.0, 1.0, 2.0])

    # comparable: (1, 2) discordant, (3, 2) concordant -> 1 / 2
    assert c_index(time, event, risk) == 0.5
    assert math.isnan(c_index(np.array([1.0, 2.0]), np.array([0, 0]), np.array([1.0, 0.0])))


def test_c_index_matches_brute_force_with_ties_and_censoring() -> None:
    rng = np.random.default_rng(0)
    time = rng.integers(1, 8, 300).astype(float)  # many tied times
    event = rng.integers(0, 2, 300)
    risk = rng.integers(0, 5, 300).astype(float)  # many tied risks

    assert c_index(time, event, risk) == pytest.approx(_brute_c_index(time, event, risk), abs=1e-12)


def test_c_index_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="events"):
        c_index(np.array([1.0, 2.0]), np.array([2, 0]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="one length"):
        c_index(np.array([1.0, 2.0]), np.array([1]), np.array([0.0, 1.0]))


def test_cox_loss_hand_case_without_ties() -> None:
    risk = torch.tensor([0.5, -1.0, 2.0])
    time = torch.tensor([3.0, 1.0, 2.0])
    event = torch.tensor([1.0, 1.0, 0.0])

    loss = cox_loss(risk, time, event)

    # event at t=1 (risk -1): risk set all three; event at t=3 (risk 0.5): itself only; t=2 censored adds no term
    expected = (math.log(math.exp(0.5) + math.exp(-1.0) + math.exp(2.0)) + 1.0 + (0.5 - 0.5)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_cox_loss_breslow_ties_share_one_risk_set_and_order_does_not_matter() -> None:
    risk = torch.tensor([0.3, -0.2, 1.0, 0.1])
    time = torch.tensor([1.0, 1.0, 2.0, 0.5])
    event = torch.tensor([1.0, 1.0, 0.0, 0.0])
    perm = torch.tensor([2, 0, 3, 1])

    loss = cox_loss(risk, time, event)

    lse = math.log(sum(math.exp(r) for r in (0.3, -0.2, 1.0)))  # both tied events: risk set {t >= 1}
    assert float(loss) == pytest.approx(((lse - 0.3) + (lse + 0.2)) / 2, rel=1e-6)
    assert float(cox_loss(risk[perm], time[perm], event[perm])) == pytest.approx(float(loss), rel=1e-6)
    assert float(cox_loss(risk + 5.0, time, event)) == pytest.approx(float(loss), rel=1e-5)  # shift-invariant


def test_cox_loss_without_events_is_zero_with_a_zero_gradient() -> None:
    risk = torch.tensor([0.3, -0.2], requires_grad=True)

    loss = cox_loss(risk, torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
    loss.backward()

    assert float(loss.detach()) == 0.0 and risk.grad is not None and (risk.grad == 0).all()


def test_cohen_kappa_by_hand_and_against_scikit_learn() -> None:
    truth = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    rng = np.random.default_rng(1)
    t, p = rng.integers(0, 3, 200), rng.integers(0, 3, 200)

    # p_o = 3/4; p_e = (2*1 + 2*3) / 16 = 1/2; kappa = (3/4 - 1/2) / (1/2)
    assert cohen_kappa(truth, pred, 2) == pytest.approx(0.5)
    assert cohen_kappa(t, p, 3) == pytest.approx(cohen_kappa_score(t, p))
    assert cohen_kappa(np.zeros(3, np.int64), np.zeros(3, np.int64), 2) == 1.0
