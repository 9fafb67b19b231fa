"""``confide status --kit KIT``: a running federation's facts in the terminal (an operator over SSH), read from
its live dashboard (``/api/state``) at the address and with the token the server wrote into its kit. A
simulation's report folder serves as the kit of ``confide simulate --dashboard``.

Every name and reason is printed as text: no rich markup, no emoji codes (a site named ``local:Hungary:`` stays
that, not a flag)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from confide.dashboard.files import TOKEN_FILE, read_place, read_token
from confide.dashboard.snapshot import Number, SiteView, Snapshot
from confide.errors import ConfideError
from confide.sanitize import one_line

DashboardPort = Annotated[
    int | None,
    typer.Option(
        "--dashboard",
        help="serve a live dashboard on this port (0: any free one): read-only, behind the token written to "
        "dashboard.token beside dashboard.json (the server kit; a simulation's report folder)",
    ),
]
DashboardHost = Annotated[
    str, typer.Option("--dashboard-host", help="address the dashboard listens on (127.0.0.1: this machine only)")
]


def fetch_state(folder: Path, timeout_s: float = 10.0) -> Snapshot:
    """The federation now, from the dashboard whose address and token ``folder`` holds."""
    place = read_place(folder)
    token = read_token(folder)
    request = urllib.request.Request(place.url + "api/state", headers={"Authorization": f"Bearer {token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the dashboard is never behind a proxy
    try:
        with opener.open(request, timeout=timeout_s) as answer:
            body = answer.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise ConfideError(
                f"the dashboard at {place.url} refused the token in {folder / TOKEN_FILE}: is another server's "
                "dashboard on that port?"
            ) from None
        raise ConfideError(f"the dashboard at {place.url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        raise ConfideError(
            f"no dashboard answers at {place.url} ({one_line(why, 200)}): is the server running, with "
            f"--dashboard {place.port}?"
        ) from None
    try:
        return Snapshot.model_validate_json(body)
    except ValidationError as exc:
        raise ConfideError(
            f"the dashboard at {place.url} answered something other than a federation's state: {one_line(exc, 200)}"
        ) from None


def _num(value: Number, digits: int = 3) -> Text:
    return Text("-" if value is None else f"{value:.{digits}f}", justify="right")


def _ago(seconds: Number) -> Text:
    if seconds is None:
        return Text("-")
    return Text(f"{seconds:.0f} s ago" if seconds < 60 else f"{seconds / 60:.1f} min ago", justify="right")


def _recorded(site: SiteView) -> Text:
    update = site.update
    if update is None:
        return Text("-")
    filters = ", ".join(update.filters) or "none"
    words = [f"round {update.round}{' (masked)' if update.masked else ''}: filters {filters}"]
    for key in ("epsilon", "delta", "dp_clip", "dp_noise_std", "shared_fraction", "svt_shared"):
        if key in update.recorded:
            words.append(f"{key} {update.recorded[key]}")
    return Text("; ".join(words))


def sites_table(state: Snapshot) -> Table:
    table = Table(title="sites", title_justify="left")
    for column in ("site", "connected", "last heard", "rounds (accepted / asked)", "last refusal or rejection"):
        table.add_column(column)
    table.add_column("its last update: filters recorded")
    for site in state.sites:
        problem = site.problem
        table.add_row(
            Text(site.name),
            Text("yes" if site.connected else "no", style="green" if site.connected else "red"),
            _ago(site.last_heard_s),
            Text(f"{site.accepted} / {site.asked}", justify="right"),
            Text("-" if problem is None else f"round {problem.round}: {problem.reason}"),
            _recorded(site),
        )
    return table


def rounds_table(state: Snapshot, last: int) -> Table:
    shown = state.rounds[-last:] if last > 0 else ()
    table = Table(title=f"rounds (the last {len(shown)} of {len(state.rounds)})", title_justify="left")
    for column in ("round", "status", "time (s)", "coordination (s)", "participants", "left out", "metrics"):
        table.add_column(column)
    for row in shown:
        metrics = _metrics(row.train_metrics)
        if row.test_metrics:  # a simulation's score of the round's model on the sites' test splits
            metrics = "; ".join(filter(None, [metrics, f"test splits: {_metrics(row.test_metrics)}"]))
        table.add_row(
            Text(str(row.round), justify="right"),
            Text(row.status),
            _num(row.seconds, 2),
            _num(row.coordination_seconds, 2),
            Text(f"{len(row.accepted)} / {len(row.asked)}", justify="right"),
            Text("; ".join(f"{site}: {why}" for site, why in row.failures.items()) or "-"),
            Text(metrics or "-"),
        )
    return table


def _metrics(values: Mapping[str, Number]) -> str:
    return ", ".join(f"{k} {'-' if v is None else f'{v:.4f}'}" for k, v in values.items())


def privacy_table(state: Snapshot) -> Table:
    table = Table(title="privacy", title_justify="left", caption=Text(state.privacy.note), caption_justify="left")
    for column in ("site", "epsilon spent", "budget", "left", "last round charged", "its spend", "delta"):
        table.add_column(column)
    for ledger in state.privacy.ledgers:
        last = ledger.points[-1] if ledger.points else None
        spent = last.epsilon if last is not None else 0.0
        left = None if ledger.budget is None else max(ledger.budget - spent, 0.0)
        table.add_row(
            Text(ledger.site),
            _num(spent),
            _num(ledger.budget),
            _num(left),
            Text("-" if last is None else str(last.round), justify="right"),
            _num(last.spent if last is not None else None),
            Text("-" if ledger.delta is None else f"{ledger.delta:.1e}", justify="right"),
        )
    return table


def show(state: Snapshot, console: Console, last_rounds: int = 10) -> None:
    age = time.time() - state.started_at
    console.print(
        Text.assemble(
            ("job ", "bold"),
            state.job_name,
            f" ({state.mode}, watched for {age / 60:.1f} min): ",
            (state.status, "bold"),
            f"; rounds closed: {state.rounds_closed} of {state.rounds_planned}",
        )
    )
    console.print(sites_table(state))
    if state.refused:
        refused = Table(title="refused connections", title_justify="left")
        for column in ("who", "why", "when"):
            refused.add_column(column)
        for item in state.refused:
            refused.add_row(Text(item.who), Text(item.reason), _ago(item.seconds_ago))
        console.print(refused)
    console.print(rounds_table(state, last_rounds))
    if state.privacy.ledgers:
        console.print(privacy_table(state))
    else:
        console.print(Text(f"privacy: {state.privacy.note}"))


def status(
    kit: Annotated[
        Path,
        typer.Option(help="the server kit the server was started with (or a simulation's report folder)"),
    ],
    rounds: Annotated[int, typer.Option(min=0, help="how many of the last rounds to list")] = 10,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds to wait for the dashboard's answer")] = 10.0,
) -> None:
    """A running federation's sites, rounds and privacy spend, from the live dashboard of `confide server
    --dashboard PORT` (or `confide simulate --dashboard PORT`)."""
    console = Console(emoji=False, highlight=False)
    if not console.is_terminal:  # logs and CI: wide enough that the tables are not cut
        console = Console(emoji=False, highlight=False, width=max(console.width, 130))
    try:
        state = fetch_state(kit, timeout)
    except ConfideError as exc:
        console.print(Text.assemble(("error: ", "bold red"), str(exc)))
        raise typer.Exit(code=2) from None
    show(state, console, rounds)
