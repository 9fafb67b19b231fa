from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from confide.config import parse_job
from confide.errors import ConfideError, ConfigError, TaskError
from confide.kinds.tables.config import TableTaskConfig
from confide.privacy.config import DpSgdSpec
from confide.records import Arrays, TrainRes
from confide.strategies import make_strategy
from confide.strategies.base import StrategyState
from confide.strategies.fedavg import FedAvg
from confide.strategies.fedprox import FedProx
from confide.workloads.kind import TorchSiteTask
from confide.workloads.registry import make_workload
from tests.helpers import arrays, site_task_of

TRAIN = {"local_steps": 40, "batch_size": 16, "lr": 0.05}
TABLE = TableTaskConfig(target="y", features=("x0", "x1", "x2", "x3", "x4"))  # a linear model on five columns


def _res(update: Arrays, n: int) -> TrainRes:
    return TrainRes(round=1, update=update, num_examples=n, metrics={"loss": 1.0})


def _table(dp_sgd: DpSgdSpec | None = None) -> TorchSiteTask:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(200, 5)).astype(np.float32))
    y = (x[:, 0] - x[:, 2] > 0).float()
    return site_task_of(TABLE, TensorDataset(x, y), TensorDataset(x[:20], y[:20]), site="s", seed=3, dp_sgd=dp_sgd)


def _start() -> Arrays:
    return make_workload(TABLE).initial(0)


def _update_norm(res: TrainRes) -> float:
    return float(np.sqrt(sum(float((v**2).sum()) for v in res.update.values())))  # type: ignore[union-attr]


def test_the_instruction_carries_proximal_mu_beside_the_train_config() -> None:
    strategy = make_strategy("fedprox", {"lr": 0.1}, mu=0.5)

    instructions = strategy.configure(1, arrays(w=[0.0]), ["a", "b"])

    assert strategy.name == "fedprox"
    assert {site: dict(ins.config) for site, ins in instructions.items()} == {
        "a": {"lr": 0.1, "proximal_mu": 0.5},
        "b": {"lr": 0.1, "proximal_mu": 0.5},
    }


def test_aggregation_is_fedavg_on_the_same_updates() -> None:
    global_arrays = arrays(w=[1.0, 1.0])
    results = [("a", _res(arrays(w=[2.0, 0.0]), 10)), ("b", _res(arrays(w=[-1.0, 4.0]), 30))]

    prox = FedProx(mu=1.0).aggregate(1, global_arrays, iter(results))
    avg = FedAvg().aggregate(1, arrays(w=[1.0, 1.0]), iter(results))

    np.testing.assert_array_equal(prox.arrays["w"], avg.arrays["w"])
    np.testing.assert_allclose(prox.arrays["w"], [0.75, 4.0])  # (10*[2,0] + 30*[-1,4]) / 40 added to [1, 1]
    assert (prox.sites, prox.num_examples) == (avg.sites, avg.num_examples)


@pytest.mark.parametrize("mu", [-0.1, float("nan"), float("inf")])
def test_mu_must_be_finite_and_not_negative(mu: float) -> None:
    with pytest.raises(ValueError, match="mu"):
        FedProx(mu=mu)


def test_fedprox_is_stateless() -> None:
    strategy = FedProx(mu=0.1)

    assert strategy.state().empty
    with pytest.raises(ConfideError, match="fedprox"):
        strategy.restore(StrategyState(scalars={"rounds": 3}))


def test_a_large_mu_holds_the_site_near_the_received_weights() -> None:
    # Adam moves each weight by about lr per step when the data's gradient dominates; the pull mu*(w - w0) with
    # mu = 100 outweighs the data's gradient (at most about 1 per weight) once w is 0.01 from w0, so the update
    # stays a small fraction of the free one
    start = _start()

    free = _table().train(start, TRAIN, round=1)
    held = _table().train(start, {**TRAIN, "proximal_mu": 100.0}, round=1)

    assert _update_norm(held) < 0.2 * _update_norm(free)


def test_mu_zero_trains_exactly_as_without_fedprox() -> None:
    start = _start()

    plain = _table().train(start, TRAIN, round=1)
    zero = _table().train(start, {**TRAIN, "proximal_mu": 0.0}, round=1)

    for name in start.names():
        np.testing.assert_array_equal(zero.update[name], plain.update[name])  # type: ignore[index]


def test_dp_sgd_honours_mu_after_the_noise() -> None:
    # the noised private gradient is the same for both runs (same seed, same Poisson samples); only the pull differs
    start = _start()
    spec = DpSgdSpec(noise_multiplier=1.0, clip=1.0)

    free = _table(spec).train(start, TRAIN, round=1)
    held = _table(spec).train(start, {**TRAIN, "proximal_mu": 100.0}, round=1)

    assert _update_norm(held) < 0.2 * _update_norm(free)


def test_a_site_refuses_a_negative_mu() -> None:
    with pytest.raises(TaskError, match="proximal_mu"):
        _table().train(_start(), {**TRAIN, "proximal_mu": -1.0}, round=1)


def test_config_refuses_a_negative_proximal_mu_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"federation\.proximal_mu"):
        parse_job({"data": {"root": "x"}, "federation": {"strategy": "fedprox", "proximal_mu": -0.5}})


def test_config_accepts_fedprox_with_its_mu() -> None:
    job = parse_job({"data": {"root": "x"}, "federation": {"strategy": "fedprox", "proximal_mu": 0.3}})

    assert (job.federation.strategy, job.federation.proximal_mu) == ("fedprox", 0.3)
