"""One snapshot of the federation for the page, ``/api/state`` and ``confide status``: the recorded state, with
what the transport knows of the sites now and the privacy ledgers, read outside the state's lock."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import JsonValue

from confide.dashboard.follow import SiteContacts
from confide.dashboard.ledgers import from_ledgers, from_reports
from confide.dashboard.snapshot import Curve, Mode, Number, Refusal, RoundView, SiteView, Snapshot, finite
from confide.dashboard.state import Parts
from confide.privacy.ledger import Ledger
from confide.sanitize import one_line
from confide.transport.base import Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """The federation being followed: its transport (who is connected), what that knows of the sites, and the
    sites' ledgers where this process holds them."""

    transport: Transport
    contacts: SiteContacts | None = None
    ledgers: Mapping[str, Ledger] | None = None


@dataclass(frozen=True)
class JobFacts:
    name: str
    rounds: int
    min_sites: int
    budget: Number  # the job's privacy budget (epsilon), if it sets one
    baselines: bool  # a simulation trains its baselines before the federation
    document: dict[str, JsonValue]  # the job as configured


def build(parts: Parts, job: JobFacts, mode: Mode, source: Source | None) -> Snapshot:
    connected, heard, refused = _contacts(source)
    names = list(dict.fromkeys([*(record.name for record in parts.sites), *connected, *heard]))
    records = {record.name: record for record in parts.sites}
    sites = []
    for name in sorted(names):
        record = records.get(name)
        sites.append(
            SiteView(
                name=name,
                connected=name in connected,
                last_heard_s=finite(heard.get(name)),
                asked=record.asked if record else 0,
                accepted=record.accepted if record else 0,
                last_round=record.last_round if record else None,
                problem=record.problem if record else None,
                update=record.update if record else None,
            )
        )
    running = [r for r in parts.rounds if r.status == "running"]
    closed = [r for r in parts.rounds if r.status == "closed"]
    if source is not None and source.ledgers is not None:
        privacy = from_ledgers(source.ledgers)
    else:
        privacy = from_reports(parts.reported, job.budget, mode)
    return Snapshot(
        version=parts.version,
        mode=mode,
        job_name=job.name,
        status=_status(job, mode, source, running, closed, len(connected), parts.ended),
        rounds_planned=job.rounds,
        rounds_closed=len(closed),
        current_round=running[-1].round if running else None,
        started_at=parts.started_at,
        taken_at=time.time(),
        sites=tuple(sites),
        rounds=parts.rounds,
        curves=curves(closed),
        privacy=privacy,
        refused=refused,
        job=job.document,
    )


def _contacts(source: Source | None) -> tuple[set[str], dict[str, float], tuple[Refusal, ...]]:
    if source is None:
        return set(), {}, ()
    try:
        connected = set(source.transport.sites())
    except Exception:  # a transport closing under our feet (the simulator's, at the end): nobody is connected
        log.debug("the transport could not say who is connected", exc_info=True)
        connected = set()
    if source.contacts is None:
        return connected, {}, ()
    heard = dict(source.contacts.last_heard())
    refused = tuple(
        Refusal(who=one_line(who, 200), reason=one_line(why, 500), seconds_ago=max(float(ago), 0.0))
        for who, why, ago in source.contacts.refused_callers()
    )
    return connected, heard, refused


def _status(
    job: JobFacts,
    mode: Mode,
    source: Source | None,
    running: Sequence[RoundView],
    closed: Sequence[RoundView],
    connected: int,
    ended: bool = False,
) -> str:
    if ended and not (closed and closed[-1].round >= job.rounds):
        last = f"after round {closed[-1].round} of {job.rounds}" if closed else "before any round closed"
        return f"ended {last}: the rounds after it did not close (see their failures)"
    if running:
        now = running[-1]
        return f"round {now.round} of {job.rounds} running ({len(now.asked)} site(s))"
    if closed and closed[-1].round >= job.rounds:
        return "done: every round closed"
    if closed:
        return f"round {closed[-1].round} of {job.rounds} closed"
    if source is None:
        if mode == "simulation" and job.baselines:
            return "the baselines train first; the federation follows"
        return "starting"
    if mode == "deployment":
        return f"waiting for sites: {connected} connected, {job.min_sites} needed"
    return "starting"


def curves(closed: Sequence[RoundView]) -> tuple[Curve, ...]:
    """The learning curves: every training metric the sites reported (their weighted mean, as aggregated), every
    federated evaluation metric (the mean over the sites that scored the model) and, in a simulation, the global
    model's scores on the sites' test splits (kept when the sites send no metrics, under differential privacy),
    round by round."""
    series: dict[str, dict[int, Number]] = {}
    for row in closed:
        for key, value in row.test_metrics.items():
            series.setdefault(f"test {key} (mean over the sites' test splits)", {})[row.round] = value
        for key, value in row.train_metrics.items():
            series.setdefault(f"training {key}", {})[row.round] = value
        scored: dict[str, list[float]] = {}
        for metrics in row.eval_metrics.values():
            for key, value in metrics.items():
                if value is not None:
                    scored.setdefault(key, []).append(value)
        for key, values in scored.items():
            series.setdefault(f"evaluation {key} (mean over sites)", {})[row.round] = sum(values) / len(values)
    return tuple(
        Curve(name=name, rounds=tuple(points), values=tuple(points.values())) for name, points in series.items()
    )
