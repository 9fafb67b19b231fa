from __future__ import annotations

import numpy as np

from confide.privacy.config import DpSgdSpec
from confide.records import Arrays
from confide.tasks.tabular import TabularTask, table_initial


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
