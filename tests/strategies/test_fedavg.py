from __future__ import annotations

import numpy as np
import pytest

from confide.errors import RoundFailed
from confide.records import Arrays, TrainRes
from confide.strategies.aggregate import accumulate, apply_delta, weighted_mean, weighted_metrics, zeros_like
from confide.strategies.fedavg import FedAvg
from tests.helpers import arrays


def _res(update: Arrays, n: int, loss: float) -> TrainRes:
    return TrainRes(round=1, update=update, num_examples=n, metrics={"loss": loss})


def test_weighted_mean_matches_hand_computation() -> None:
    # (1*[1,2] + 3*[5,6]) / 4 = [4, 5]
    got = weighted_mean([(arrays(w=[1.0, 2.0]), 1.0), (arrays(w=[5.0, 6.0]), 3.0)])

    np.testing.assert_allclose(got["w"], [4.0, 5.0])


def test_weighted_mean_refuses_nothing_and_negative_weights() -> None:
    with pytest.raises(ValueError):
        weighted_mean([])
    with pytest.raises(ValueError):
        weighted_mean([(arrays(w=[1.0]), -1.0)])


def test_accumulate_adds_in_place() -> None:
    acc = zeros_like(arrays(w=[0.0, 0.0]))
    buffer = acc["w"]

    accumulate(acc, arrays(w=[1.0, -1.0]), 2.0)
    accumulate(acc, arrays(w=[0.5, 0.5]), 1.0)

    assert acc["w"] is buffer
    np.testing.assert_allclose(buffer, [2.5, -1.5])


def test_apply_delta_keeps_integer_dtype() -> None:
    base = Arrays.from_dict({"w": np.array([1.0], np.float32), "n": np.array([10], np.int64)})

    out = apply_delta(base, {"w": np.array([0.5]), "n": np.array([2.6])})

    assert out["w"].dtype == np.float32 and out["w"][0] == 1.5
    assert out["n"].dtype == np.int64 and out["n"][0] == 13


def test_fedavg_weights_updates_by_examples() -> None:
    # global [1, 1]; deltas [2, 0] with 10 examples and [-1, 4] with 30:
    # mean delta = ([20, 0] + [-30, 120]) / 40 = [-0.25, 3], so the next model is [0.75, 4]
    global_arrays = arrays(w=[1.0, 1.0])
    results = [("a", _res(arrays(w=[2.0, 0.0]), 10, 1.0)), ("b", _res(arrays(w=[-1.0, 4.0]), 30, 3.0))]

    agg = FedAvg().aggregate(1, global_arrays, iter(results))

    np.testing.assert_allclose(agg.arrays["w"], [0.75, 4.0])
    assert agg.sites == ("a", "b") and agg.num_examples == 40
    assert agg.metrics["loss"] == pytest.approx(2.5)  # (10*1 + 30*3) / 40


def test_fedavg_with_no_results_fails_the_round() -> None:
    with pytest.raises(RoundFailed):
        FedAvg().aggregate(1, arrays(w=[1.0]), iter([]))


def test_fedavg_sends_every_site_the_same_instruction() -> None:
    ins = FedAvg({"lr": 0.1}).configure(4, arrays(w=[1.0]), ["a", "b"])

    assert set(ins) == {"a", "b"} and ins["a"] is ins["b"]
    assert ins["a"].round == 4 and ins["a"].config["lr"] == 0.1


def test_weighted_metrics_ignores_missing_keys() -> None:
    got = weighted_metrics([({"loss": 1.0, "acc": 0.5}, 1.0), ({"loss": 3.0}, 1.0)])

    assert got == {"loss": 2.0, "acc": 0.5}
