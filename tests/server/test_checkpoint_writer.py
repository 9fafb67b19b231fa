"""Checkpoints written while the next round runs: the same files as a write on the round's path, the strategy's
state never torn, a failed write named, and the previous checkpoint kept."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from confide.errors import ConfideError
from confide.records import Arrays, TrainIns
from confide.server import checkpoint, checkpoint_writer
from confide.server.loop import LoopConfig
from confide.sim import simulate
from confide.strategies import FedAvg, make_strategy
from confide.strategies.base import StrategyState
from tests.helpers import QuadraticTask, arrays

TARGETS = {"a": arrays(w=[2.0, 0.0]), "b": arrays(w=[0.0, 2.0]), "c": arrays(w=[1.0, 1.0])}


def _tasks() -> dict[str, QuadraticTask]:
    return {name: QuadraticTask(t, examples=10) for name, t in TARGETS.items()}


class Watched(FedAvg):
    """FedAvg that notes when each round's instructions are asked for."""

    def __init__(self) -> None:
        super().__init__({"lr": 0.5})
        self.configured: dict[int, threading.Event] = {r: threading.Event() for r in range(1, 10)}

    def configure(self, round: int, global_arrays: Arrays, sites: Sequence[str]) -> dict[str, TrainIns]:
        self.configured[round].set()
        return super().configure(round, global_arrays, sites)


def test_the_next_round_starts_while_the_checkpoint_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    strategy = Watched()
    written = checkpoint.save
    overlapped: list[int] = []

    def slow_save(directory: Path, round: int, *args: Any, **kwargs: Any) -> Path:
        if round == 1:  # round 1's write finishes only once round 2 has begun (never, were it on round 1's path)
            assert strategy.configured[2].wait(60), "round 2 waited for round 1's checkpoint"
            overlapped.append(round)
        return written(directory, round, *args, **kwargs)

    monkeypatch.setattr(checkpoint_writer.checkpoint, "save", slow_save)

    result = simulate(strategy, _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=3, checkpoint_dir=tmp_path))

    assert overlapped == [1]
    saved = checkpoint.load_latest(tmp_path)
    assert saved is not None and saved.round == 3  # run() returns once the last write is on disk
    np.testing.assert_array_equal(saved.arrays["w"], result.arrays["w"])
    assert [r["round"] for r in saved.state["history"]] == [1, 2, 3]


def test_a_strategys_state_is_written_as_it_stood_after_its_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FedAdam's moments change in place at the end of every round: a slow write of round N must not catch round
    N + 1's moments."""
    strategy = make_strategy("fedadam", {"lr": 0.5, "local_steps": 1}, server_lr=0.1)
    at_submit: dict[int, dict[str, np.ndarray]] = {}
    as_written: dict[int, dict[str, np.ndarray]] = {}
    submit = checkpoint_writer.CheckpointWriter.submit

    def spy_submit(self: Any, round: int, model: Arrays, state: dict[str, Any], kept: StrategyState) -> None:
        at_submit[round] = {n: v.copy() for n, v in kept.arrays.items()}
        submit(self, round, model, state, kept)

    def slow_save(directory: Path, round: int, model: Arrays, state: Any, kept: StrategyState) -> Path:
        time.sleep(0.3)  # longer than a round of these sites
        as_written[round] = {n: v.copy() for n, v in kept.arrays.items()}
        return directory

    monkeypatch.setattr(checkpoint_writer.CheckpointWriter, "submit", spy_submit)
    monkeypatch.setattr(checkpoint_writer.checkpoint, "save", slow_save)

    simulate(strategy, _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=4, checkpoint_dir=tmp_path))

    assert sorted(as_written) == [1, 2, 3, 4] and at_submit[1]  # FedAdam keeps arrays
    for rnd, moments in at_submit.items():
        for name, value in moments.items():
            np.testing.assert_array_equal(as_written[rnd][name], value)


def test_a_checkpoint_that_cannot_be_written_stops_the_job_naming_the_round_and_the_previous_one_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = checkpoint.save

    def full_disk(directory: Path, round: int, *args: Any, **kwargs: Any) -> Path:
        if round == 2:
            raise OSError(28, "No space left on device")
        return written(directory, round, *args, **kwargs)

    monkeypatch.setattr(checkpoint_writer.checkpoint, "save", full_disk)

    with pytest.raises(ConfideError, match=r"checkpoint of round 2 could not be written .*No space left"):
        simulate(FedAvg({"lr": 0.5}), _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=4, checkpoint_dir=tmp_path))

    saved = checkpoint.load_latest(tmp_path)
    assert saved is not None and saved.round == 1
