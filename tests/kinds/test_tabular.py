from __future__ import annotations

import numpy as np
import pytest

from confide.errors import TaskError
from confide.kinds.tables.table import TableRows
from confide.kinds.tables.tabular import METRIC_KEYS, TabularTask, table_initial
from confide.privacy.config import DpSgdSpec
from confide.records import Arrays, TrainRes
from confide.strategies.controls import CONTROL_PREFIX, with_controls


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)


def test_a_table_task_learns_a_linear_rule() -> None:
    (x, y), (xt, yt) = _data(300, 0), _data(200, 1)
    task = TabularTask(x, y, xt, yt, site="s")
    start = table_initial(5, "logistic", 0)

    res = task.train(start, {"local_steps": 200, "batch_size": 32, "lr": 0.05}, round=1)
    trained = Arrays.from_dict({n: start[n] + res.update[n] for n in start})  # type: ignore[index]

    assert task.accuracy(trained) > 0.9


def test_dp_sgd_on_a_table_spends_what_it_says() -> None:
    (x, y), (xt, yt) = _data(100, 0), _data(50, 1)
    task = TabularTask(x, y, xt, yt, site="s", dp_sgd=DpSgdSpec(noise_multiplier=1.0, clip=1.0))

    (spend,) = task.privacy_spend({"local_steps": 4, "batch_size": 10})

    assert (spend.sampling_rate, spend.steps) == (0.1, 4)
    res = task.train(table_initial(5, "logistic", 0), {"local_steps": 4, "batch_size": 10}, round=1)
    assert all(np.isfinite(v).all() for v in res.update.values())  # type: ignore[union-attr]


def _trained(start: Arrays, res: TrainRes) -> Arrays:
    return Arrays.from_dict({n: start[n] + res.update[n] for n in start.names()})


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
    (x, y), (xt, yt) = _three_classes(400, 0), _three_classes(200, 1)
    task = TabularTask(x, y, xt, yt, site="s", kind="multiclass", classes=3)
    start = table_initial(4, "linear", 0, kind="multiclass", classes=3)

    res = task.train(start, {"local_steps": 100, "batch_size": 32, "lr": 0.05}, round=1)
    scores = task.score(_trained(start, res), TableRows(xt, yt, "multiclass"))
    before = task.score(start, TableRows(xt, yt, "multiclass"))

    assert set(scores) == set(METRIC_KEYS["multiclass"])
    assert scores["accuracy"] > 0.85 and scores["balanced_accuracy"] > 0.85 and scores["cohen_kappa"] > 0.75
    assert before["accuracy"] < 0.7


def test_a_binary_task_scores_accuracy_balanced_accuracy_and_auc() -> None:
    (x, y), (xt, yt) = _data(300, 0), _data(200, 1)
    task = TabularTask(x, y, xt, yt, site="s")
    start = table_initial(5, "linear", 0)

    res = task.train(start, {"local_steps": 200, "batch_size": 32, "lr": 0.05}, round=1)
    evaluation = task.evaluate(_trained(start, res), {}, round=1)

    assert set(evaluation.metrics) == {"accuracy", "balanced_accuracy", "auc"}
    assert evaluation.metrics["auc"] > 0.95 and evaluation.num_examples == 200
    assert evaluation.loss < task.evaluate(start, {}, round=1).loss


def test_cox_learns_the_sign_and_rank_of_a_synthetic_risk() -> None:
    (x, y), (xt, yt) = _survival(600, 0), _survival(300, 1)
    task = TabularTask(x, y, xt, yt, site="s", kind="survival")
    start = table_initial(3, "linear", 0, kind="survival")

    res = task.train(start, {"local_steps": 300, "batch_size": 64, "lr": 0.02}, round=1)
    trained = _trained(start, res)
    scores = task.score(trained, TableRows(xt, yt, "survival"))

    w = trained["0.weight"][0]
    assert start.names() == ("0.weight",)  # no bias: the Cox likelihood does not depend on one
    assert w[0] > 0.5 and w[1] < -0.2 and abs(w[2]) < 0.2  # beta = (1, -0.5, 0)
    assert scores["c_index"] > 0.7 and scores["cox_loss"] < task.score(start, TableRows(xt, yt, "survival"))["cox_loss"]


def test_dp_sgd_trains_multiclass_and_refuses_survival_with_the_reason() -> None:
    (x, y), (xt, yt) = _three_classes(100, 0), _three_classes(50, 1)
    spec = DpSgdSpec(noise_multiplier=1.0, clip=1.0)
    task = TabularTask(x, y, xt, yt, site="s", kind="multiclass", classes=3, dp_sgd=spec)
    sx, sy = _survival(50, 0)

    res = task.train(table_initial(4, "linear", 0, kind="multiclass", classes=3), {"local_steps": 3}, round=1)

    assert task.privacy_spend({"local_steps": 3, "batch_size": 10})[0].sampling_rate == 0.1
    assert all(np.isfinite(v).all() and np.abs(v).sum() > 0 for v in res.update.values())
    with pytest.raises(TaskError, match="Cox loss of a batch is not a sum of per-patient terms"):
        TabularTask(sx, sy, site="s", kind="survival", dp_sgd=spec)


def test_fedbn_keeps_the_batch_norm_layer_at_the_site() -> None:
    (x, y), (xt, yt) = _data(120, 0), _data(40, 1)
    task = TabularTask(x, y, xt, yt, site="s", model="mlp", norm="batch", hidden=8)
    start = table_initial(5, "mlp", 0, hidden=8, norm="batch")
    config = {"local_steps": 20, "batch_size": 16, "lr": 0.05, "keep_local_norm": True}

    res = task.train(start, config, round=1)

    norm = {n for n in start.names() if n.startswith("1.")}  # Linear, BatchNorm1d, ReLU, Linear
    assert norm == {"1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert all(not res.update[n].any() for n in norm)
    assert all(res.update[n].any() for n in ("0.weight", "3.weight"))
    assert not np.array_equal(task.personal(start)["1.running_mean"], start["1.running_mean"])  # its own, kept


def test_training_goes_through_the_local_rules() -> None:
    (x, y), (xt, yt) = _data(200, 0), _data(40, 1)
    start = table_initial(5, "linear", 0)
    config = {"local_steps": 40, "batch_size": 16, "lr": 0.05}

    free = TabularTask(x, y, xt, yt, site="s").train(start, config, round=1)
    held = TabularTask(x, y, xt, yt, site="s").train(start, {**config, "proximal_mu": 100.0}, round=1)
    scaffold = TabularTask(x, y, xt, yt, site="s")
    controlled = scaffold.train(with_controls(start), config, round=1)

    def norm(res: TrainRes) -> float:
        return float(np.sqrt(sum(float((res.update[n] ** 2).sum()) for n in start.names())))

    assert norm(held) < 0.2 * norm(free)
    assert {n for n in controlled.update.names() if n.startswith(CONTROL_PREFIX)} == {
        CONTROL_PREFIX + n for n in start.names()
    }
    assert 0 <= scaffold.score(with_controls(start), TableRows(xt, yt))["accuracy"] <= 1  # controls are set aside
