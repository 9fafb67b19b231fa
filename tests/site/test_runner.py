from __future__ import annotations

import numpy as np

from confide import serde
from confide.privacy.filter import FilterChain
from confide.records import EvalIns, EvalRes, Failure, TrainIns, TrainRes
from confide.site.runner import SiteRunner
from tests.helpers import QuadraticTask, arrays


class Halve:
    name = "halve"

    def apply(self, res: TrainRes, rng: np.random.Generator) -> TrainRes:
        return TrainRes(
            round=res.round,
            update=arrays(**{n: (v / 2).tolist() for n, v in res.update.items()}),
            num_examples=res.num_examples,
            metrics=res.metrics,
            meta=res.meta,
        )


class Broken:
    name = "broken"

    def apply(self, res: TrainRes, rng: np.random.Generator) -> TrainRes:
        raise ValueError("cannot clip")


def _train(runner: SiteRunner) -> object:
    ins = TrainIns(round=1, arrays=arrays(w=[0.0, 0.0]), config={"lr": 1.0})
    return serde.decode(runner.handle(serde.encode(ins)))


def test_runner_filters_the_update_and_records_the_chain() -> None:
    runner = SiteRunner("a", QuadraticTask(arrays(w=[2.0, 4.0]), 5), chain=FilterChain([Halve()]))

    res = _train(runner)

    assert isinstance(res, TrainRes)
    np.testing.assert_allclose(res.update["w"], [1.0, 2.0])
    assert res.meta["filters"] == "halve" and res.num_examples == 5


def test_a_failing_filter_blocks_the_update() -> None:
    runner = SiteRunner("a", QuadraticTask(arrays(w=[2.0, 4.0]), 5), chain=FilterChain([Halve(), Broken()]))

    res = _train(runner)

    assert isinstance(res, Failure) and res.kind == "refused"
    assert "broken" in res.reason and "blocked" in res.reason


def test_a_failing_task_becomes_a_failure_with_its_reason() -> None:
    runner = SiteRunner("a", QuadraticTask(arrays(w=[2.0, 4.0]), 5, fail=True))

    res = _train(runner)

    assert isinstance(res, Failure) and "disk full" in res.reason


def test_runner_evaluates() -> None:
    runner = SiteRunner("a", QuadraticTask(arrays(w=[3.0, 4.0]), 5))

    res = serde.decode(runner.handle(serde.encode(EvalIns(round=2, arrays=arrays(w=[0.0, 0.0])))))

    assert isinstance(res, EvalRes) and res.loss == 25.0 and res.metrics["distance"] == 5.0
