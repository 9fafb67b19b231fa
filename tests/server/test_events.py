"""Round events told to several listeners: every listener in order; a failing observer logged and skipped, a
failing primary listener (the job's own) raised."""

from __future__ import annotations

import logging

import pytest

from confide.records import Arrays
from confide.server.events import Fanout
from confide.server.loop import RoundResult


class Listener:
    def __init__(self, name: str, calls: list[str], fail: bool = False) -> None:
        self.name, self.calls, self.fail = name, calls, fail

    def round_started(self, round: int, sites: list[str]) -> None:
        self.calls.append(f"{self.name} start {round} {','.join(sites)}")
        if self.fail:
            raise RuntimeError("listener bug")

    def site_finished(self, round: int, site: str, ok: bool, detail: str) -> None:
        self.calls.append(f"{self.name} site {round} {site} {ok}")

    def round_finished(self, result: RoundResult, global_arrays: Arrays) -> None:
        self.calls.append(f"{self.name} end {result.round}")


def test_every_listener_is_told_in_order() -> None:
    calls: list[str] = []
    fan = Fanout(Listener("a", calls), None, Listener("b", calls))

    fan.round_started(1, ["x", "y"])
    fan.site_finished(1, "x", True, "loss 0.1")
    fan.round_finished(
        RoundResult(round=1, sites=("x",), failures={}, train_metrics={}, eval_metrics={}, seconds=0.1),
        Arrays.from_dict({}),
    )

    assert calls == ["a start 1 x,y", "b start 1 x,y", "a site 1 x True", "b site 1 x True", "a end 1", "b end 1"]


def test_a_failing_observer_is_logged_once_and_the_others_are_still_told(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    fan = Fanout(None, Listener("bad", calls, fail=True), Listener("good", calls))

    with caplog.at_level(logging.ERROR, logger="confide.server.events"):
        fan.round_started(1, ["x"])
        fan.round_started(2, ["x"])

    assert calls == ["bad start 1 x", "good start 1 x", "bad start 2 x", "good start 2 x"]
    assert sum("observer Listener failed" in r.getMessage() for r in caplog.records) == 1


def test_the_primary_listeners_error_ends_the_round_as_it_would_alone() -> None:
    calls: list[str] = []
    fan = Fanout(Listener("recorder", calls, fail=True), Listener("dashboard", calls))

    with pytest.raises(RuntimeError, match="listener bug"):
        fan.round_started(1, ["x"])

    assert calls == ["recorder start 1 x"]
