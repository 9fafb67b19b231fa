from __future__ import annotations

import numpy as np
import pytest
import torch

from confide.config import parse_job
from confide.errors import ConfigError, RoundFailed
from confide.records import Arrays, TrainRes
from confide.strategies import make_strategy
from confide.strategies.controls import CONTROL_PREFIX, model_part, with_controls
from confide.strategies.scaffold import Scaffold
from confide.tasks.local_rules import LocalRules, SiteMemory
from tests.helpers import arrays

C = CONTROL_PREFIX


def _res(n: int, **values: list[float]) -> TrainRes:
    return TrainRes(round=1, update=arrays(**values), num_examples=n, metrics={})


def test_with_controls_adds_a_zero_control_for_every_float_array() -> None:
    model = Arrays.from_dict({"w": np.ones(2, np.float32), "count": np.array(3, np.int64)})

    full = with_controls(model)

    assert full.names() == ("w", "count", C + "w")
    assert np.array_equal(full[C + "w"], [0, 0])
    assert model_part(full).names() == ("w", "count")


def test_model_moves_by_the_weighted_mean_and_controls_by_their_sum_over_all_sites() -> None:
    # prepare: 4 sites in the federation, 2 report this round
    strategy = Scaffold({"lr": 0.1}, total_sites=4)
    start = Arrays.from_dict({"w": np.array([1.0, 2.0], np.float32), C + "w": np.array([0.5, 0.5], np.float32)})
    results = [
        (
            "a",
            TrainRes(
                round=1, update=Arrays.from_dict({"w": np.float32([1, 0]), C + "w": np.float32([2, 4])}), num_examples=1
            ),
        ),
        (
            "b",
            TrainRes(
                round=1, update=Arrays.from_dict({"w": np.float32([4, 3]), C + "w": np.float32([2, 0])}), num_examples=2
            ),
        ),
    ]

    out = strategy.aggregate(1, start, iter(results))

    # w: [1,2] + ([1,0]*1 + [4,3]*2) / 3 = [1+3, 2+2]; c: [0.5,0.5] + ([2,4]+[2,0]) / 4 = [1.5, 1.5]
    assert np.allclose(out.arrays["w"], [4.0, 4.0])
    assert np.allclose(out.arrays[C + "w"], [1.5, 1.5])
    assert out.sites == ("a", "b")


def test_scaffold_refuses_a_model_without_controls_and_sparse_updates() -> None:
    strategy = Scaffold({}, total_sites=2)
    with pytest.raises(RoundFailed, match="control variate"):
        strategy.configure(1, arrays(w=[1.0]), ["a"])
    from confide.records import SparseArrays

    sparse = SparseArrays.from_dense(arrays(w=[1.0, 2.0]), {"w": np.array([0])})
    with pytest.raises(RoundFailed, match="sparse"):
        strategy.aggregate(1, arrays(w=[0.0, 0.0]), iter([("a", TrainRes(round=1, update=sparse, num_examples=1))]))


def test_a_site_corrects_its_steps_and_reports_its_control_change() -> None:
    # prepare: a linear model whose gradient is zero (loss independent of w), so only the correction moves it
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    start = with_controls(Arrays.from_dict({"weight": np.array([[1.0]], np.float32)}))
    start = Arrays.from_dict({"weight": start["weight"], C + "weight": np.array([[0.2]], np.float32)})
    memory = SiteMemory(controls={"weight": np.array([[0.05]], np.float32)})
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)

    rules = LocalRules.begin(model, start, {"lr": 0.5}, memory)
    for _ in range(2):
        optimiser.zero_grad()
        (model.weight * 0).sum().backward()
        optimiser.step()
        rules.after_step()
    update = rules.finish()

    # each step: w -= lr (c - c_i) = 0.5 * 0.15 -> w = 1 - 0.15 = 0.85
    assert np.allclose(update["weight"], [[-0.15]])
    # c_i+ = c_i - c + (x - y) / (K lr) = 0.05 - 0.2 + 0.15 / 1.0 = 0.0, so the change is -0.05
    assert np.allclose(update[C + "weight"], [[-0.05]], atol=1e-6)
    assert memory.controls is not None and np.allclose(memory.controls["weight"], [[0.0]], atol=1e-6)


def test_scaffold_is_selectable_and_refuses_privacy_filters() -> None:
    strategy = make_strategy("scaffold", {"lr": 0.1}, total_sites=3)
    assert isinstance(strategy, Scaffold) and strategy.total_sites == 3
    with pytest.raises(ConfigError, match="control-variate"):
        parse_job(
            {
                "data": {"root": "x"},
                "federation": {"strategy": "scaffold"},
                "privacy": {"filters": [{"type": "sparsify", "fraction": 0.5}]},
            }
        )
