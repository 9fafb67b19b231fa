"""The dashboard's record of a federation: round events, updates and ledgers in, one snapshot out."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import pytest

from confide.dashboard.snapshot import UpdateNote
from confide.dashboard.state import FederationState
from confide.dashboard.view import JobFacts, Source, build
from confide.privacy.ledger import Ledger
from confide.privacy.spend import Spend
from confide.records import Arrays
from confide.server.loop import RoundResult

EMPTY = Arrays.from_dict({})


def _facts(rounds: int = 3, budget: float | None = None, baselines: bool = False) -> JobFacts:
    return JobFacts(
        name="job", rounds=rounds, min_sites=2, budget=budget, baselines=baselines, document={"name": "job"}
    )


class _Transport:
    concurrent = False

    def __init__(self, sites: list[str]) -> None:
        self.connected = sites

    def sites(self) -> list[str]:
        return list(self.connected)

    def exchange(self, messages: Any, deadline_s: float | None = None) -> Any:
        return iter(())

    def notify(self, site: str, message: str) -> None:
        pass

    def close(self) -> None:
        pass


class _Contacts:
    def last_heard(self) -> dict[str, float]:
        return {"a": 1.5, "gone": 90.0}

    def refused_callers(self) -> list[tuple[str, str, float]]:
        return [("127.0.0.1:5000 (certificate 1f)", "certificate revoked", 3.0)]


def _result(rnd: int, sites: tuple[str, ...], **fields: Any) -> RoundResult:
    values: dict[str, Any] = {
        "failures": {},
        "train_metrics": {"loss": 0.5},
        "eval_metrics": {},
        "seconds": 2.0,
        "site_seconds": 1.5,
    }
    values.update(fields)
    return RoundResult(round=rnd, sites=sites, **values)


def _note(rnd: int, epsilon: float | None = None) -> UpdateNote:
    recorded: dict[str, str | bool | int | float] = {"filter_params": "[]"}
    if epsilon is not None:
        recorded.update(epsilon=epsilon, delta=1e-5)
    return UpdateNote(round=rnd, masked=False, num_examples=1, filters=("gaussian",), recorded=recorded, metrics={})


def test_round_events_become_round_rows_site_counts_and_a_curve() -> None:
    state = FederationState()
    state.round_started(1, ["a", "b"])
    state.site_finished(1, "a", True, "loss 0.5")
    state.site_finished(1, "b", False, "site b refused: its budget is spent")

    state.round_finished(_result(1, ("a",), failures={"b": "site b refused: its budget is spent"}), EMPTY)
    state.round_started(2, ["a", "b"])
    snap = build(state.parts(), _facts(), "simulation", Source(_Transport(["a", "b"])))

    assert [(r.round, r.status) for r in snap.rounds] == [(1, "closed"), (2, "running")]
    closed = snap.rounds[0]
    assert closed.asked == ("a", "b") and closed.accepted == ("a",) and closed.answered == 2
    assert closed.coordination_seconds == pytest.approx(0.5) and closed.failures == {"b": snap.sites[1].problem.reason}  # type: ignore[union-attr]
    sites = {s.name: s for s in snap.sites}
    assert (sites["a"].accepted, sites["a"].asked, sites["a"].last_round, sites["a"].problem) == (1, 2, 1, None)
    assert sites["b"].accepted == 0 and sites["b"].problem is not None and sites["b"].problem.round == 1
    assert all(s.connected for s in snap.sites)
    assert [(c.name, c.rounds, c.values) for c in snap.curves] == [("training loss", (1,), (0.5,))]
    assert (snap.rounds_closed, snap.current_round) == (1, 2)
    assert snap.status == "round 2 of 3 running (2 site(s))"


def test_a_round_that_never_closed_is_shown_failed_when_the_next_attempt_starts() -> None:
    state = FederationState()
    state.round_started(1, ["a", "b"])
    state.site_finished(1, "a", False, "round deadline passed before its answer arrived")

    state.round_started(1, ["a", "b"])  # the loop retries the round that missed its quorum
    snap = build(state.parts(), _facts(), "deployment", Source(_Transport(["a", "b"])))

    assert [(r.round, r.status) for r in snap.rounds] == [(1, "failed"), (1, "running")]
    assert snap.rounds[0].failures == {"a": "round deadline passed before its answer arrived"}
    assert snap.rounds[0].seconds is not None and snap.rounds_closed == 0


def test_a_metric_that_is_not_finite_is_null_and_the_snapshot_is_strict_json() -> None:
    state = FederationState()
    state.round_started(1, ["a"])
    state.round_finished(_result(1, ("a",), train_metrics={"loss": math.nan, "auc": math.inf}), EMPTY)

    text = build(state.parts(), _facts(), "simulation", None).model_dump_json()

    document = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert document["rounds"][0]["train_metrics"] == {"loss": None, "auc": None}


def test_the_evaluation_curve_is_the_mean_over_the_sites_that_scored() -> None:
    state = FederationState()
    state.round_started(1, ["a", "b"])
    evaluation = {"a": {"accuracy": 0.6}, "b": {"accuracy": 0.8, "auc": math.nan}}

    state.round_finished(_result(1, ("a", "b"), eval_metrics=evaluation), EMPTY)
    curves = {c.name: c.values for c in build(state.parts(), _facts(), "simulation", None).curves}

    assert curves["evaluation accuracy (mean over sites)"] == (pytest.approx(0.7),)
    assert "evaluation auc (mean over sites)" not in curves


def test_a_simulations_test_scores_make_a_curve_whether_told_before_or_after_the_rounds_end() -> None:
    state = FederationState()
    state.round_started(1, ["a"])
    state.scored(1, {"auc": 0.61, "accuracy": math.nan})  # the simulator's recorder is told first
    state.round_finished(_result(1, ("a",), train_metrics={}), EMPTY)
    state.round_started(2, ["a"])
    state.round_finished(_result(2, ("a",), train_metrics={}), EMPTY)
    state.scored(2, {"auc": 0.72})  # or after: the closed round takes it

    snap = build(state.parts(), _facts(), "simulation", None)

    assert [r.test_metrics for r in snap.rounds] == [{"auc": 0.61, "accuracy": None}, {"auc": 0.72}]
    curves = {c.name: (c.rounds, c.values) for c in snap.curves}
    assert curves == {
        "test auc (mean over the sites' test splits)": ((1, 2), (0.61, 0.72)),
        "test accuracy (mean over the sites' test splits)": ((1,), (None,)),
    }


def test_an_error_while_recording_is_logged_never_raised_into_the_round(caplog: pytest.LogCaptureFixture) -> None:
    state = FederationState()
    broken = RoundResult(1, ("a",), None, {}, {}, 1.0)  # type: ignore[arg-type]  # failures is no mapping

    with caplog.at_level(logging.ERROR, logger="confide.dashboard.state"):
        state.round_finished(broken, EMPTY)
        state.round_finished(broken, EMPTY)

    assert state.version == 0
    assert [r.message for r in caplog.records] == ["the dashboard failed to record a round's end; the round goes on"]


def test_a_simulation_shows_each_sites_own_ledger_against_its_budget() -> None:
    ledger = Ledger("a", delta=1e-5, budget=5.0)
    ledger.record(1, [Spend("svt", epsilon=0.5)])
    ledger.record(2, [Spend("svt", epsilon=0.5), Spend("laplace", epsilon=0.25)])

    privacy = build(
        FederationState().parts(), _facts(), "simulation", Source(_Transport([]), None, {"a": ledger})
    ).privacy

    assert privacy.source == "ledgers" and privacy.ledgers[0].budget == 5.0
    assert [(p.round, p.epsilon, p.spent) for p in privacy.ledgers[0].points] == [(1, 0.5, 0.5), (2, 1.25, 0.75)]


def test_a_simulation_without_privacy_says_no_site_keeps_a_ledger() -> None:
    privacy = build(FederationState().parts(), _facts(), "simulation", Source(_Transport([]), None, {})).privacy

    assert privacy.source == "none" and "spends no privacy" in privacy.note


def test_a_deployment_shows_what_the_sites_reported_and_says_it_cannot_check_it() -> None:
    state = FederationState()
    state.saw_update("a", _note(1, 0.4))
    state.saw_update("a", _note(2, 0.9))
    state.saw_update("b", _note(1))  # no epsilon: its privacy spends none

    snap = build(state.parts(), _facts(budget=4.0), "deployment", Source(_Transport(["a", "b"])))

    assert snap.privacy.source == "reported" and "cannot check" in snap.privacy.note and "4" in snap.privacy.note
    (ledger,) = snap.privacy.ledgers
    assert ledger.site == "a" and ledger.budget == 4.0 and ledger.delta == 1e-5
    assert [(p.round, p.epsilon, p.spent) for p in ledger.points] == [(1, 0.4, 0.4), (2, 0.9, pytest.approx(0.5))]
    assert {s.name: s.update.filters for s in snap.sites if s.update} == {"a": ("gaussian",), "b": ("gaussian",)}


def test_a_deployment_without_reports_says_the_server_knows_nothing_of_the_ledgers() -> None:
    privacy = build(FederationState().parts(), _facts(budget=4.0), "deployment", Source(_Transport([]))).privacy

    assert privacy.source == "none" and "knows nothing" in privacy.note and privacy.ledgers == ()


def test_the_transports_contacts_give_connection_last_heard_and_refusals() -> None:
    state = FederationState()

    snap = build(state.parts(), _facts(), "deployment", Source(_Transport(["a"]), _Contacts()))

    sites = {s.name: s for s in snap.sites}
    assert (sites["a"].connected, sites["a"].last_heard_s) == (True, 1.5)
    assert (sites["gone"].connected, sites["gone"].last_heard_s) == (False, 90.0)
    assert [(r.who, r.reason) for r in snap.refused] == [("127.0.0.1:5000 (certificate 1f)", "certificate revoked")]
    assert snap.status == "waiting for sites: 1 connected, 2 needed"


@pytest.mark.parametrize(
    ("mode", "baselines", "closed", "expected"),
    [
        ("simulation", True, None, "the baselines train first; the federation follows"),
        ("deployment", False, None, "starting"),
        ("simulation", False, 3, "done: every round closed"),
        ("simulation", False, 1, "round 1 of 3 closed"),
    ],
)
def test_the_status_line_says_where_the_job_is(mode: Any, baselines: bool, closed: int | None, expected: str) -> None:
    state = FederationState()
    for rnd in range(1, (closed or 0) + 1):
        state.round_started(rnd, ["a"])
        state.round_finished(_result(rnd, ("a",)), EMPTY)
    source = Source(_Transport(["a"])) if closed else None

    assert build(state.parts(), _facts(baselines=baselines), mode, source).status == expected


def test_a_run_that_ends_before_its_last_round_shows_the_open_round_failed() -> None:
    state = FederationState()
    state.round_started(1, ["a"])
    state.round_finished(_result(1, ("a",)), EMPTY)
    state.round_started(2, ["a"])
    state.site_finished(2, "a", False, "site a refused: privacy budget: this round would exceed it")

    state.ended()  # the loop stopped (budgets spent) and the simulator closed the transport
    snap = build(state.parts(), _facts(rounds=5), "simulation", Source(_Transport([])))

    assert [(r.round, r.status) for r in snap.rounds] == [(1, "closed"), (2, "failed")]
    assert snap.current_round is None and snap.status.startswith("ended after round 1 of 5")
