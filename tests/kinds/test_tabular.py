"""The table task's training and scoring on arrays, through the public path (the registry's workload and its
site task); the features are declared, so the model's size is known without a table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from confide.errors import TaskError
from confide.kinds.tables.config import TableTaskConfig
from confide.kinds.tables.metrics import METRIC_KEYS
from confide.privacy.config import DpSgdSpec
from confide.records import Arrays, TrainRes
from confide.strategies.controls import CONTROL_PREFIX, with_controls
from confide.workloads.base import Workload
from confide.workloads.kind import TorchSiteTask
from confide.workloads.registry import make_workload
from tests.helpers import site_task_of


def _config(features: int, **fields: Any) -> TableTaskConfig:
    outcome = {"target": "time", "event": "event"} if fields.get("kind") == "survival" else {"target": "y"}
    return TableTaskConfig(**outcome, features=tuple(f"x{i}" for i in range(features)), **fields)


def _task(
    config: TableTaskConfig,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    dp_sgd: DpSgdSpec | None = None,
) -> tuple[TorchSiteTask, Workload]:
    task = site_task_of(config, _rows(*train, config.kind), _rows(*test, config.kind), site="s", dp_sgd=dp_sgd)
    return task, make_workload(config)


def _rows(x: np.ndarray, y: np.ndarray, kind: str = "binary") -> TensorDataset:
    target = torch.from_numpy(y.astype(np.int64 if kind == "multiclass" else np.float32))
    return TensorDataset(torch.from_numpy(x.astype(np.float32)), target)


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)


def _trained(start: Arrays, res: TrainRes) -> Arrays:
    return Arrays.from_dict({n: start[n] + res.update[n] for n in start.names()})


def test_a_table_task_learns_a_linear_rule() -> None:
    test = _data(200, 1)
    task, workload = _task(_config(5), _data(300, 0), test)
    start = workload.initial(0)

    res = task.train(start, {"local_steps": 200, "batch_size": 32, "lr": 0.05}, round=1)

    assert task.score(_trained(start, res), _rows(*test))["accuracy"] > 0.9


def test_dp_sgd_on_a_table_spends_what_it_says() -> None:
    task, workload = _task(_config(5), _data(100, 0), _data(50, 1), DpSgdSpec(noise_multiplier=1.0, clip=1.0))

    (spend,) = task.privacy_spend({"local_steps": 4, "batch_size": 10})

    assert (spend.sampling_rate, spend.steps) == (0.1, 4)
    res = task.train(workload.initial(0), {"local_steps": 4, "batch_size": 10}, round=1)
    assert all(np.isfinite(v).all() for v in res.update.values())  # type: ignore[union-attr]


def _three_classes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, np.argmax(x[:, :3] + 0.1 * rng.normal(size=(n, 3)), axis=1)


def _survival(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Exponential times with hazard exp(x @ beta), beta = (1, -0.5, 0), a third censored."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    event_time = rng.exponential(1.0 / np.exp(x @ np.array([1.0, -0.5, 0.0])))
    follow_up = rng.exponential(2.0, n)
    y = np.stack([np.minimum(event_time, follow_up), event_time <= follow_up], axis=1).astype(np.float32)
    return x, y


def test_a_multiclass_table_task_learns_and_scores_every_key() -> None:
    test = _three_classes(200, 1)
    config = _config(4, kind="multiclass", classes=("a", "b", "c"))
    task, workload = _task(config, _three_classes(400, 0), test)
    start = workload.initial(0)

    res = task.train(start, {"local_steps": 100, "batch_size": 32, "lr": 0.05}, round=1)
    scores = task.score(_trained(start, res), _rows(*test, "multiclass"))
    before = task.score(start, _rows(*test, "multiclass"))

    assert set(scores) == set(METRIC_KEYS["multiclass"]) and workload.metric_keys == METRIC_KEYS["multiclass"]
    assert scores["accuracy"] > 0.85 and scores["balanced_accuracy"] > 0.85 and scores["cohen_kappa"] > 0.75
    assert before["accuracy"] < 0.7


def test_a_binary_task_scores_accuracy_balanced_accuracy_and_auc_and_its_loss() -> None:
    task, workload = _task(_config(5), _data(300, 0), _data(200, 1))
    start = workload.initial(0)

    res = task.train(start, {"local_steps": 200, "batch_size": 32, "lr": 0.05}, round=1)
    evaluation = task.evaluate(_trained(start, res), {}, round=1)

    assert set(evaluation.metrics) == {"accuracy", "balanced_accuracy", "auc"}  # the loss is not a metric
    assert evaluation.metrics["auc"] > 0.95 and evaluation.num_examples == 200
    assert evaluation.loss < task.evaluate(start, {}, round=1).loss  # a real loss: binary cross-entropy


def test_cox_learns_the_sign_and_rank_of_a_synthetic_risk() -> None:
    test = _survival(300, 1)
    task, workload = _task(_config(3, kind="survival"), _survival(600, 0), test)
    start = workload.initial(0)

    res = task.train(start, {"local_steps": 300, "batch_size": 64, "lr": 0.02}, round=1)
    trained = _trained(start, res)
    scores = task.score(trained, _rows(*test, "survival"))

    w = trained["0.weight"][0]
    assert start.names() == ("0.weight",)  # no bias: the Cox likelihood does not depend on one
    assert w[0] > 0.5 and w[1] < -0.2 and abs(w[2]) < 0.2  # beta = (1, -0.5, 0)
    assert scores["c_index"] > 0.7 and scores["cox_loss"] < task.score(start, _rows(*test, "survival"))["cox_loss"]
    assert task.evaluate(trained, {}, round=1).loss == pytest.approx(scores["cox_loss"])  # the Cox loss of the split


def test_dp_sgd_trains_multiclass_and_refuses_survival_with_the_reason() -> None:
    spec = DpSgdSpec(noise_multiplier=1.0, clip=1.0)
    config = _config(4, kind="multiclass", classes=("a", "b", "c"))
    task, workload = _task(config, _three_classes(100, 0), _three_classes(50, 1), spec)
    survival = make_workload(_config(3, kind="survival"))
    sx, sy = _survival(50, 0)

    res = task.train(workload.initial(0), {"local_steps": 3}, round=1)

    assert task.privacy_spend({"local_steps": 3, "batch_size": 10})[0].sampling_rate == 0.1
    assert all(np.isfinite(v).all() and np.abs(v).sum() > 0 for v in res.update.values())  # type: ignore[union-attr]
    with pytest.raises(
        TaskError,
        match=r"DP-SGD cannot train task table: a survival \(Cox\) model: the Cox loss of a "
        "batch is not a sum of per-patient terms",
    ):
        survival.task(_rows(sx, sy, "survival"), None, site="s", seed=0, dp_sgd=spec)
    assert survival.task(_rows(sx, sy, "survival"), None, site="s", seed=0, dp_sgd=None) is not None


def test_fedbn_keeps_the_batch_norm_layer_at_the_site() -> None:
    task, workload = _task(_config(5, model="mlp", norm="batch", hidden=8), _data(120, 0), _data(40, 1))
    start = workload.initial(0)
    config = {"local_steps": 20, "batch_size": 16, "lr": 0.05, "keep_local_norm": True}

    res = task.train(start, config, round=1)

    norm = {n for n in start.names() if n.startswith("1.")}  # Linear, BatchNorm1d, ReLU, Linear
    assert norm == {"1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert norm == workload.norm_names()
    assert all(not res.update[n].any() for n in norm)  # type: ignore[union-attr]
    assert all(res.update[n].any() for n in ("0.weight", "3.weight"))  # type: ignore[union-attr]
    assert not np.array_equal(task.personal(start)["1.running_mean"], start["1.running_mean"])  # its own, kept


def test_training_goes_through_the_local_rules() -> None:
    train, test = _data(200, 0), _data(40, 1)
    start = make_workload(_config(5)).initial(0)
    config = {"local_steps": 40, "batch_size": 16, "lr": 0.05}

    free = _task(_config(5), train, test)[0].train(start, config, round=1)
    held = _task(_config(5), train, test)[0].train(start, {**config, "proximal_mu": 100.0}, round=1)
    scaffold = _task(_config(5), train, test)[0]
    controlled = scaffold.train(with_controls(start), config, round=1)

    def norm(res: TrainRes) -> float:
        return float(np.sqrt(sum(float((res.update[n] ** 2).sum()) for n in start.names())))  # type: ignore[index]

    assert norm(held) < 0.2 * norm(free)
    assert {n for n in controlled.update.names() if n.startswith(CONTROL_PREFIX)} == {
        CONTROL_PREFIX + n for n in start.names()
    }
    assert 0 <= scaffold.score(with_controls(start), _rows(*test))["accuracy"] <= 1  # controls are set aside


def test_the_table_task_trains_and_scores_on_the_device_it_names() -> None:
    workload = make_workload(_config(5, device="cpu"))
    task = workload.task(_rows(*_data(60, 0)), _rows(*_data(20, 1)), site="s", seed=0, dp_sgd=None)
    start = workload.initial(0)

    res = task.train(start, {"local_steps": 3}, round=1)

    assert (
        isinstance(task, TorchSiteTask)
        and task.device == torch.device("cpu")
        and next(task.model.parameters()).device.type == "cpu"
    )
    assert np.isfinite(task.evaluate(_trained(start, res), {}, round=1).loss)
    assert TableTaskConfig(target="y").device == "cpu"  # the default: a small model, results alike everywhere
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        TableTaskConfig(target="y", device="gpu")
