from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from confide.config import parse_job
from confide.errors import ConfideError, ConfigError, RoundFailed
from confide.records import SparseArrays, TrainRes
from confide.server.loop import LoopConfig
from confide.sim import simulate
from confide.strategies import Cyclic, make_strategy
from confide.strategies.base import StrategyState
from tests.helpers import QuadraticTask, arrays

TARGETS = {"a": arrays(w=[2.0, 0.0]), "b": arrays(w=[0.0, 2.0]), "c": arrays(w=[1.0, 1.0])}


def _tasks(**overrides: QuadraticTask) -> dict[str, QuadraticTask]:
    tasks = {name: QuadraticTask(target, examples=10) for name, target in TARGETS.items()}
    tasks.update(overrides)
    return tasks


def _res(update: list[float], n: int = 5) -> TrainRes:
    return TrainRes(round=1, update=arrays(w=update), num_examples=n, metrics={"loss": 0.5})


def test_only_the_first_site_by_name_is_instructed_in_round_one() -> None:
    instructions = Cyclic({"lr": 0.1}).configure(1, arrays(w=[0.0]), ["c", "a", "b"])

    assert list(instructions) == ["a"] and instructions["a"].config["lr"] == 0.1


def test_sites_train_in_turn_and_each_update_is_applied_as_it_is() -> None:
    # lr 0.5, one step: the site moves w half-way to its target, and the next model is exactly that
    # a: [0, 0] -> [1, 0]; b: [1, 0] + 0.5 * ([0, 2] - [1, 0]) = [0.5, 1]; c: [0.5, 1] + 0.5 * [0.5, 0] = [0.75, 1];
    # a again: [0.75, 1] + 0.5 * ([2, 0] - [0.75, 1]) = [1.375, 0.5]
    result = simulate(Cyclic({"lr": 0.5}), _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=4))

    assert [r.sites for r in result.history.rounds] == [("a",), ("b",), ("c",), ("a",)]
    np.testing.assert_allclose(result.arrays["w"], [1.375, 0.5], atol=1e-6)


def test_a_resumed_run_goes_on_with_the_right_site(tmp_path: Path) -> None:
    unbroken = simulate(Cyclic({"lr": 0.5}), _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=5))
    simulate(Cyclic({"lr": 0.5}), _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=2, checkpoint_dir=tmp_path))

    strategy = Cyclic({"lr": 0.5})
    resumed = simulate(strategy, _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=5, checkpoint_dir=tmp_path))

    assert [r.sites for r in resumed.history.rounds] == [("a",), ("b",), ("c",), ("a",), ("b",)]
    assert strategy.turns == 5 and strategy.last_site == "b"
    np.testing.assert_allclose(resumed.arrays["w"], unbroken.arrays["w"], atol=1e-6)


def test_a_site_that_left_is_skipped_and_one_that_joined_takes_its_place() -> None:
    strategy = Cyclic()
    strategy.restore(StrategyState(scalars={"turns": 1, "last_site": "a"}))

    without_b = strategy.configure(2, arrays(w=[0.0]), ["a", "c"])
    strategy.restore(StrategyState(scalars={"turns": 3, "last_site": "c"}))
    wrapped = strategy.configure(4, arrays(w=[0.0]), ["a", "c", "d"])

    assert list(without_b) == ["c"] and list(wrapped) == ["d"]


def test_when_the_sites_turn_fails_the_retried_round_goes_to_the_next_site() -> None:
    # round 2 is b's turn; b fails, the round misses its quorum and is retried with c; round 3 goes on after c
    tasks = _tasks(b=QuadraticTask(TARGETS["b"], 10, fail=True))
    config = LoopConfig(rounds=3, quorum_retries=1, retry_wait_s=0.0)

    result = simulate(Cyclic(), tasks, arrays(w=[0.0, 0.0]), config)

    assert [r.sites for r in result.history.rounds] == [("a",), ("c",), ("a",)]


def test_a_sparse_update_leaves_the_entries_it_did_not_send_unchanged() -> None:
    sparse = SparseArrays.from_dense(arrays(w=[3.0, 9.0]), {"w": np.array([0])})
    res = TrainRes(round=1, update=sparse, num_examples=4)

    agg = Cyclic().aggregate(1, arrays(w=[1.0, 1.0]), iter([("a", res)]))

    np.testing.assert_allclose(agg.arrays["w"], [4.0, 1.0])
    assert agg.sites == ("a",) and agg.num_examples == 4


def test_a_round_takes_exactly_one_update() -> None:
    with pytest.raises(RoundFailed, match="sent no update"):
        Cyclic().aggregate(1, arrays(w=[0.0]), iter([]))
    with pytest.raises(RoundFailed, match="takes one update"):
        Cyclic().aggregate(1, arrays(w=[0.0]), iter([("a", _res([1.0])), ("b", _res([2.0]))]))


def test_state_round_trips_and_another_strategys_state_is_refused() -> None:
    strategy = Cyclic()
    strategy.aggregate(1, arrays(w=[0.0]), iter([("b", _res([1.0]))]))

    restored = Cyclic()
    restored.restore(strategy.state())

    assert (restored.turns, restored.last_site) == (1, "b")
    assert list(restored.configure(2, arrays(w=[0.0]), ["a", "b", "c"])) == ["c"]
    with pytest.raises(ConfideError, match="not cyclic's"):
        Cyclic().restore(StrategyState(scalars={"variant": "adam", "rounds": 1}))
    with pytest.raises(ConfideError, match="inconsistent"):
        Cyclic().restore(StrategyState(scalars={"turns": 2}))


def test_jobs_accept_cyclic_only_with_a_quorum_of_one() -> None:
    job = parse_job({"data": {"root": "x"}, "federation": {"strategy": "cyclic"}})

    assert make_strategy(job.federation.strategy, {}).name == "cyclic"
    with pytest.raises(ConfigError, match="min_sites must be 1"):
        parse_job({"data": {"root": "x"}, "federation": {"strategy": "cyclic", "min_sites": 2}})
