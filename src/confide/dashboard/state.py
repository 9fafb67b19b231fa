"""The federation as the dashboard records it, from the server loop's round events and the updates that pass its
transport. Every call takes one lock for a few assignments (work in proportion to the sites it names, nothing
more: no I/O, no JSON), so a dashboard never slows a round; an error in it is logged once, never raised into the
loop. Readers take a copy of the parts under the same lock (:meth:`FederationState.parts`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from confide.dashboard.snapshot import Number, Problem, RoundView, UpdateNote, finite
from confide.records import Arrays
from confide.sanitize import one_line
from confide.server.loop import RoundResult

log = logging.getLogger(__name__)

REASON_CHARS = 500


@dataclass
class SiteRecord:
    """What is known of one site (mutable: changed under the state's lock only)."""

    name: str
    asked: int = 0
    accepted: int = 0
    last_round: int | None = None
    problem: Problem | None = None
    update: UpdateNote | None = None


@dataclass(frozen=True)
class Reported:
    """The epsilon a site's update reported (its ledger's total so far), and at which delta."""

    round: int
    epsilon: float
    delta: Number


@dataclass(frozen=True)
class Parts:
    """A consistent copy of the state, taken under its lock."""

    version: int
    sites: tuple[SiteRecord, ...]
    rounds: tuple[RoundView, ...]  # closed and failed rounds, oldest first, then the running one
    reported: dict[str, tuple[Reported, ...]]
    started_at: float
    ended: bool = False  # the federation's run is over


@dataclass
class _Open:
    round: int
    started_at: float
    asked: tuple[str, ...]
    answered: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    def view(self, status: str = "running") -> RoundView:
        return RoundView(
            round=self.round,
            status="failed" if status == "failed" else "running",
            started_at=self.started_at,
            seconds=time.time() - self.started_at if status == "failed" else None,
            asked=self.asked,
            answered=self.answered,
            failures=dict(self.failures),
        )


class FederationState:
    """A :class:`~confide.server.loop.RoundEvents` listener that keeps what the dashboard shows. ``version`` grows
    with every change, so a reader can tell whether there is anything new."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sites: dict[str, SiteRecord] = {}
        self._rounds: list[RoundView] = []
        self._open: _Open | None = None
        self._reported: dict[str, list[Reported]] = {}
        self._started = time.time()
        self._failed: set[str] = set()
        self._ended = False
        self._scores: dict[int, dict[str, Number]] = {}  # a simulation's test-split scores, by round
        self.version = 0

    @contextmanager
    def _changing(self, what: str) -> Iterator[None]:
        """The lock held for a change; an error is logged (once per kind of event) and swallowed."""
        try:
            with self._lock:
                yield
                self.version += 1
        except Exception:
            if what not in self._failed:
                self._failed.add(what)
                log.exception("the dashboard failed to record %s; the round goes on", what)

    def _site(self, name: str) -> SiteRecord:
        record = self._sites.get(name)
        if record is None:
            record = self._sites[name] = SiteRecord(name)
        return record

    # -- RoundEvents ------------------------------------------------------------------------------
    def round_started(self, round: int, sites: list[str]) -> None:
        with self._changing("a round's start"):
            if self._open is not None:  # the previous round never closed: it missed its quorum, or failed
                self._rounds.append(self._open.view("failed"))
            self._open = _Open(round, time.time(), tuple(sites))
            for name in sites:
                self._site(name).asked += 1

    def site_finished(self, round: int, site: str, ok: bool, detail: str) -> None:
        with self._changing("a site's answer"):
            record = self._site(site)
            if self._open is not None and self._open.round == round:
                self._open.answered += 1
                if not ok:
                    self._open.failures[site] = one_line(detail, REASON_CHARS)
            if not ok:
                record.problem = Problem(round=round, reason=one_line(detail, REASON_CHARS), at=time.time())

    def round_finished(self, result: RoundResult, global_arrays: Arrays) -> None:
        with self._changing("a round's end"):
            opened = self._open if self._open is not None and self._open.round == result.round else None
            started = opened.started_at if opened is not None else time.time() - result.seconds
            view = closed_view(result, started)
            if opened is not None:
                view = view.model_copy(update={"asked": opened.asked, "answered": opened.answered})
            if result.round in self._scores:
                view = view.model_copy(update={"test_metrics": self._scores[result.round]})
            self._rounds.append(view)
            self._open = None
            for name in result.sites:
                record = self._site(name)
                record.accepted += 1
                record.last_round = result.round
            for name, reason in view.failures.items():
                record = self._site(name)
                if record.problem is None or record.problem.round != result.round:
                    record.problem = Problem(round=result.round, reason=reason, at=time.time())

    # -- what passed the transport ----------------------------------------------------------------
    def saw_update(self, site: str, note: UpdateNote) -> None:
        """A site's training answer, as the server received it (before its checks: a site spends its privacy on an
        update whether or not the server then accepts it)."""
        epsilon = finite(note.recorded.get("epsilon"))
        with self._changing("an update"):
            self._site(site).update = note
            if epsilon is not None:
                self._reported.setdefault(site, []).append(
                    Reported(note.round, epsilon, finite(note.recorded.get("delta")))
                )

    def scored(self, round: int, metrics: Mapping[str, float]) -> None:
        """A simulation scored round ``round``'s global model on the sites' test splits (the mean over them). The
        simulator may say so before or after the round's end reaches this state."""
        with self._changing("a round's test scores"):
            scores = self._scores[round] = _metrics(metrics)
            for at, view in enumerate(self._rounds):
                if view.round == round and view.status == "closed":
                    self._rounds[at] = view.model_copy(update={"test_metrics": scores})

    def ended(self) -> None:
        """The federation's run is over (its transport closed): a round still open never closed."""
        with self._changing("the run's end"):
            if self._open is not None:
                self._rounds.append(self._open.view("failed"))
                self._open = None
            self._ended = True

    def parts(self) -> Parts:
        with self._lock:
            rounds = list(self._rounds)
            if self._open is not None:
                rounds.append(self._open.view())
            return Parts(
                version=self.version,
                sites=tuple(_copy(record) for record in self._sites.values()),
                rounds=tuple(rounds),
                reported={site: tuple(points) for site, points in self._reported.items()},
                started_at=self._started,
                ended=self._ended,
            )


def _copy(record: SiteRecord) -> SiteRecord:
    return SiteRecord(record.name, record.asked, record.accepted, record.last_round, record.problem, record.update)


def _metrics(values: Mapping[str, float]) -> dict[str, Number]:
    return {one_line(key, 100): finite(value) for key, value in values.items()}


def closed_view(result: RoundResult, started_at: float) -> RoundView:
    """A closed round as the dashboard shows it."""
    return RoundView(
        round=result.round,
        status="closed",
        started_at=started_at,
        seconds=finite(result.seconds),
        site_seconds=finite(result.site_seconds),
        coordination_seconds=finite(result.coordination_seconds),
        accepted=tuple(result.sites),
        failures={site: one_line(reason, REASON_CHARS) for site, reason in result.failures.items()},
        train_metrics=_metrics(result.train_metrics),
        eval_metrics={site: _metrics(values) for site, values in result.eval_metrics.items()},
    )
