from __future__ import annotations

import pytest

from confide.server.loop import LoopConfig
from confide.server.site_time import SiteTime, exchange_seconds
from confide.sim import simulate
from confide.strategies import FedAvg
from tests.helpers import QuadraticTask, arrays


def test_sites_working_at_once_keep_an_exchange_waiting_for_the_slowest_only() -> None:
    assert exchange_seconds([0.2, 0.5, 0.1], concurrent=True) == pytest.approx(0.5)


def test_sites_taking_turns_keep_an_exchange_waiting_for_all_of_them() -> None:
    assert exchange_seconds([0.2, 0.5, 0.1], concurrent=False) == pytest.approx(0.8)


def test_an_exchange_without_replies_takes_no_site_time_and_negative_times_count_as_zero() -> None:
    assert exchange_seconds([], concurrent=True) == 0.0
    assert exchange_seconds([-3.0, 0.25], concurrent=False) == pytest.approx(0.25)


def test_a_rounds_exchanges_add_up() -> None:
    time = SiteTime(concurrent=True)
    time.exchange().extend([1.0, 3.0])  # training
    time.exchange().extend([0.5, 0.25])  # evaluation

    assert time.seconds == pytest.approx(3.5)


def test_the_simulator_counts_every_site_since_its_sites_take_turns() -> None:
    tasks = {name: QuadraticTask(arrays(w=[float(i), 1.0]), examples=5) for i, name in enumerate(["a", "b", "c"])}

    history = simulate(FedAvg({"lr": 0.5}), tasks, arrays(w=[0.0, 0.0]), LoopConfig(rounds=2)).history

    for result in history.rounds:
        assert 0 < result.site_seconds <= result.seconds
        assert result.coordination_seconds == pytest.approx(result.seconds - result.site_seconds)
