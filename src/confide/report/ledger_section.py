"""The report's privacy section: each site's ledger summed up (mechanism, parameters, epsilon against its budget,
delta), epsilon after every round as a table and a plot, every release, and in words what the ledger can claim and
what it cannot. A job whose privacy spends nothing (sparsification, secure aggregation alone) gets a short section
that says no epsilon is claimed; a job without privacy gets none."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from confide.report import html_page
from confide.report.section import NONE, Section
from confide.report.tables import ledger_matrix, ledger_rows, markdown_table

if TYPE_CHECKING:
    from confide.run_result import JobResult

Ledgers = Sequence[Mapping[str, Any]]

# what one release's epsilon is about, per mechanism (the unit of privacy)
UNIT = {
    "dp-sgd": (
        "DP-SGD (record level): each site's epsilon bounds what everything it sent reveals about any one of its "
        "training examples (a table row, an image, a case); a patient with several examples is covered only "
        "with a group-privacy factor"
    ),
    "gaussian": (
        "the Gaussian filter (client level, DP-FedAvg): each site's epsilon bounds what its updates reveal about "
        "its whole training data at once, every patient of the site together"
    ),
    "svt": (
        "the sparse vector technique (pure epsilon, client level): its epsilons add up, with no delta of their own"
    ),
}
PARAMETER_SETS = 2
"""Distinct parameter sets of one mechanism shown in a site's summary row; the rest are counted."""


def _params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


def _rounds(ledger: Mapping[str, Any]) -> int:
    return len({(str(e.get("job", "")), int(e["round"])) for e in ledger.get("entries", [])})


def summary_rows(ledgers: Ledgers, rounds_run: int) -> tuple[list[str], list[list[str]]]:
    """One row per site: its mechanisms and their parameters, the rounds it was charged for, epsilon in total
    against its budget, and delta."""
    header = ["site", "mechanism", "parameters", "rounds charged", "epsilon", "budget", "of budget", "delta"]
    body = []
    for ledger in sorted(ledgers, key=lambda d: str(d["site"])):
        entries = ledger.get("entries", [])
        settings: dict[str, list[str]] = {}
        for entry in entries:
            shown = settings.setdefault(str(entry["mechanism"]), [])
            text = _params(entry.get("params", {}))
            if text not in shown:
                shown.append(text)
        params = "; ".join(
            " | ".join(sets[:PARAMETER_SETS])
            + (f" (+{len(sets) - PARAMETER_SETS} more)" if len(sets) > PARAMETER_SETS else "")
            for sets in settings.values()
        )
        total = float(entries[-1]["epsilon_total"]) if entries else 0.0
        budget = ledger.get("budget")
        body.append(
            [
                str(ledger["site"]),
                ", ".join(settings) or "-",
                params or "-",
                f"{_rounds(ledger)} of {rounds_run}",
                f"{total:.3g}",
                "-" if budget is None else f"{budget:g}",
                "-" if budget is None else f"{total / float(budget):.0%}",
                f"{float(ledger['delta']):g}",
            ]
        )
    return header, body


def claims(result: JobResult, ledgers: Ledgers) -> tuple[list[str], list[str]]:
    """What the ledgers claim, and what they do not: lines of plain text."""
    delta = float(ledgers[0]["delta"])
    mechanisms = {str(e["mechanism"]) for d in ledgers for e in d.get("entries", [])}
    units = [text for key, text in UNIT.items() if any(m == key or m.startswith(f"{key}-") for m in mechanisms)]
    can = [
        *[f"Unit of privacy of {text}." for text in units],
        "Gaussian releases are composed with the Renyi-DP and the privacy-loss-distribution accountants of "
        "dp-accounting, the smaller upper bound kept; pure-epsilon releases add. Each epsilon is an upper bound "
        f"at delta {delta:g}, against anyone who sees every update a site sent (the server included).",
        "The noise came from each site's operating-system CSPRNG, never from the job's seed: no one holding the "
        "job can regenerate it.",
    ]
    can += _delta_check(result, ledgers, delta)
    can += _budget_lines(result, ledgers)
    cannot = [
        "These numbers are bounds, not measurements: `confide privacy audit` attacks what a site sends and reports "
        "the epsilon an attack proves.",
        "The scores in this report are exact, computed by the simulator on every site's test split; a deployed "
        "site under DP refuses federated evaluation and scores the final model itself. Publishing the scores, the "
        "site-data table (counts, class balance, dropped inputs) or the learning curves releases information "
        "this ledger does not count.",
        "This simulation's ledgers start at zero; a deployed site keeps one ledger per kit, across every job "
        "(tuning runs on the same patients spend too).",
    ]
    if any(run.kind != "federated" for run in result.runs):
        cannot.insert(
            1,
            "Only the federated run is private: the local-only, pooled and fine-tuned models were trained without "
            "noise (in a deployment they never leave their site; this simulation scores them on every site).",
        )
    if result.job.federation.fraction < 1:
        cannot.append(
            f"Sites were sampled (federation.fraction {result.job.federation.fraction:g}); the ledger claims no "
            "amplification from it: the server picks the sample and sees who answers."
        )
    return can, cannot


def _delta_check(result: JobResult, ledgers: Ledgers, delta: float) -> list[str]:
    """Whether delta is below 1/n at every site (n: its training examples): a delta near 1/n allows one
    example in n to be revealed outright."""
    sizes = {str(d["site"]): result.sizes[str(d["site"])][0] for d in ledgers if str(d["site"]) in result.sizes}
    if not sizes:
        return []
    loose = {site: n for site, n in sizes.items() if n > 0 and delta * n >= 0.1}
    if loose:
        shown = ", ".join(f"{site} ({n} examples)" for site, n in loose.items())
        return [
            f"Caution: delta {delta:g} is not far below 1/n at {shown}: a delta of that size allows a few examples "
            "to be revealed outright; choose a delta well below 1/n."
        ]
    smallest = min(sizes.values())
    return [f"Delta {delta:g} is far below 1/n at every site (the smallest holds {smallest} training examples)."]


def _budget_lines(result: JobResult, ledgers: Ledgers) -> list[str]:
    """Each site with a budget: how much of it was spent, and in how many of the rounds run."""
    rounds_run = _rounds_run(result)
    out = []
    for ledger in sorted(ledgers, key=lambda d: str(d["site"])):
        budget, entries = ledger.get("budget"), ledger.get("entries", [])
        if budget is None or not entries:
            continue
        total, charged = float(entries[-1]["epsilon_total"]), _rounds(ledger)
        line = f"{ledger['site']} spent {total:.3g} of its budget of {float(budget):g} ({total / float(budget):.0%})"
        if charged < rounds_run:
            line += (
                f" in {charged} of the {rounds_run} rounds run: a site refuses a round that would pass its budget "
                "(or was not asked, or failed)"
            )
        out.append(line + ".")
    stopped = [run.stopped for run in result.runs if run.kind == "federated" and run.stopped]
    return out + [f"Training stopped early: {why}" for why in stopped]


def _rounds_run(result: JobResult) -> int:
    federated = next((run for run in result.runs if run.kind == "federated"), None)
    return len(federated.curve) if federated is not None and federated.curve else result.job.federation.rounds


def section(result: JobResult, ledgers: Ledgers, plot: str | None) -> Section:
    """The section "Privacy ledger" (``plot``: the file name of the ledger's plot, where drawn); for a job whose
    privacy spends nothing, "Privacy" saying so; none for a job without privacy."""
    if not ledgers:
        return _unaccounted(result)
    delta = float(ledgers[0]["delta"])
    summary = summary_rows(ledgers, _rounds_run(result))
    matrix = ledger_matrix(ledgers)
    every = ledger_rows(ledgers)
    can, cannot = claims(result, ledgers)
    intro = f"Epsilon spent by each site, at delta {delta:g}, as the sites' own ledgers recorded it."
    md = ["## Privacy ledger", "", intro, "", markdown_table(*summary), ""]
    md += ["What the ledger claims:", "", *[f"- {line}" for line in can], ""]
    md += ["What it does not claim:", "", *[f"- {line}" for line in cannot], ""]
    md += ["Epsilon spent by the end of each round:", "", markdown_table(*matrix), ""]
    md += [f"![privacy ledger]({plot})", ""] if plot else []
    md += ["Every release, as the sites' ledgers recorded it:", "", markdown_table(*every), ""]
    image = f'<img src="{html.escape(plot)}" alt="privacy ledger">' if plot else ""
    page = (
        f"<h2>Privacy ledger</h2><p>{html.escape(intro)}</p>{html_page.table(*summary, text_columns=(1, 2))}"
        f"<h3>What the ledger claims</h3>{_list(can)}<h3>What it does not claim</h3>{_list(cannot)}"
        f"<h3>Epsilon spent by the end of each round</h3>{html_page.table(*matrix)}{image}"
        f"<details><summary>Every release ({len(every[1])})</summary>"
        f"{html_page.table(*every, text_columns=(2, 3))}</details>"
    )
    return Section(tuple(md), page)


def _list(lines: Sequence[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"


def _unaccounted(result: JobResult) -> Section:
    """A job with privacy settings that spend no epsilon: say that nothing is claimed, and why."""
    privacy = result.job.privacy
    kinds = [f.type for f in privacy.filters]
    said = []
    if "sparsify" in kinds:
        said.append(
            "The sparsify filter shares part of each update; that is not differential privacy and no epsilon is "
            "claimed for it (the svt filter is its differentially private form)."
        )
    if privacy.secure_aggregation:
        said.append(
            "Secure aggregation hides each site's update from the server, which learns only their sum; without "
            "noise it claims no epsilon."
        )
    if not said:
        return NONE
    md = ["## Privacy", "", *[f"- {line}" for line in said], ""]
    return Section(tuple(md), f"<h2>Privacy</h2>{_list(said)}")
