"""The privacy part of the dashboard: each site's epsilon after every round, against its budget.

A simulation holds every site's ledger in its process: the dashboard reads them as they are (their entries are
appended by the sites' runners; reading them changes nothing). On the Ray engine they live in the actors, and the
page shows what the sites' updates report, as deployed. A deployed server holds none: each site keeps its
own (``KIT/ledger.json``). All it can know is the epsilon each site reports with its update (its ledger's total,
over every job it took part in), which it cannot check, and the job's budget, which a site's own policy may make
smaller. The page says which of the two it shows, or that it knows nothing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from confide.dashboard.snapshot import LedgerPoint, LedgerView, Mode, Number, PrivacyView, finite
from confide.dashboard.state import Reported
from confide.privacy.ledger import Ledger


def points(totals: Iterable[tuple[int, float]]) -> tuple[LedgerPoint, ...]:
    """(round, total so far) pairs, in order -> one point per round: its last total and what the round added."""
    last: dict[int, float] = {}
    for round, total in totals:
        last[round] = total
    out: list[LedgerPoint] = []
    before = 0.0
    for round in sorted(last):
        out.append(LedgerPoint(round=round, epsilon=last[round], spent=max(last[round] - before, 0.0)))
        before = last[round]
    return tuple(out)


def from_ledgers(ledgers: Mapping[str, Ledger]) -> PrivacyView:
    """The sites' own ledgers (a simulation)."""
    if not ledgers:
        return PrivacyView(source="none", note="this job spends no privacy: no site keeps a ledger")
    views = []
    for site, ledger in sorted(ledgers.items()):
        entries = list(ledger.entries)  # a copy: the site's runner may append while we read
        views.append(
            LedgerView(
                site=site,
                delta=finite(ledger.delta),
                budget=finite(ledger.budget),
                points=points((entry.round, entry.epsilon_total) for entry in entries),
            )
        )
    return PrivacyView(
        source="ledgers",
        note="each site's own ledger, read in this process: epsilon at the ledger's delta after every round, "
        "composed by its accountant, against the site's budget",
        ledgers=tuple(views),
    )


def from_reports(
    reported: Mapping[str, tuple[Reported, ...]], job_budget: Number, mode: Mode = "deployment"
) -> PrivacyView:
    """What the sites reported with their updates (a deployment, or a simulation whose sites' ledgers live in
    Ray's actors)."""
    if not reported:
        return PrivacyView(
            source="none",
            note="the server knows nothing of the sites' privacy ledgers: each site keeps its own, and no update "
            "has reported an epsilon (its privacy spends none, or no update has arrived yet)",
        )
    if mode == "simulation":
        return PrivacyView(
            source="reported",
            note="as each site reported it with its updates: its own ledger's total; the ledgers stay in the Ray "
            "actors that host the sites, and come back to the report when the job ends",
            ledgers=_views(reported, job_budget),
        )
    budget = (
        ""
        if job_budget is None
        else f" The job's budget is epsilon {job_budget:g}; a site's own policy may set a smaller one."
    )
    return PrivacyView(
        source="reported",
        note="as each site reported it with its updates: its own ledger's total (over every job its kit took part "
        "in), which the server cannot check; the ledgers stay at the sites." + budget,
        ledgers=_views(reported, job_budget),
    )


def _views(reported: Mapping[str, tuple[Reported, ...]], job_budget: Number) -> tuple[LedgerView, ...]:
    return tuple(
        LedgerView(
            site=site,
            delta=items[-1].delta,
            budget=job_budget,
            points=points((item.round, item.epsilon) for item in items),
        )
        for site, items in sorted(reported.items())
    )
