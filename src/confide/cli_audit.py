"""``confide privacy audit``: attack what a site really sends and compare with its ledger (see
:mod:`confide.audit.run`)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from confide.errors import ConfideError

console = Console()
if not console.is_terminal:  # logs and CI: wide enough that the table is never cut
    console = Console(width=max(console.width, 160))


def audit(
    task: Annotated[
        str, typer.Option(help="table (membership of canary rows) or image (gradient inversion, identification)")
    ],
    out: Annotated[Path, typer.Option(help="folder for audit.md, audit.json, the figures (and generated data)")] = Path(
        "runs/privacy-audit"
    ),
    data: Annotated[
        Path | None,
        typer.Option(
            help="real data: for table, the UCI heart-disease CSV (or a CSV with site and y columns); for image, "
            "the MIAS folder or a folder of site folders. Default: generated data under OUT/data"
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick/--full", help="CI-sized (seconds) or larger samples (minutes)")
    ] = True,
    seed: Annotated[
        int, typer.Option(help="seeds the experiment (data, candidates, canaries), not the sites' noise")
    ] = 0,
    trials: Annotated[int | None, typer.Option(min=2, help="image: identification trials; table: site rounds")] = None,
    config: Annotated[
        list[str] | None,
        typer.Option(help="audit only these privacy configurations (repeat): none, gaussian, dp-sgd, sparsify"),
    ] = None,
) -> None:
    """Run real attacks on a site's updates under each privacy configuration, beside the ledger's epsilon.

    Exits with code 1 when an attack proves more epsilon than the ledger allows (a bug), 2 on bad input."""
    from confide.audit.report import header, legend, row_cells, write_audit
    from confide.audit.run import run_audit
    from confide.audit.settings import full
    from confide.audit.settings import quick as quick_settings
    from confide.report.progress import ProgressDisplay

    settings = quick_settings(seed) if quick else full(seed)
    if trials is not None:
        settings = replace(
            settings, image=replace(settings.image, trials=trials), table=replace(settings.table, rounds=trials)
        )
    if config:
        settings = replace(settings, configs=tuple(config))
    began = time.perf_counter()
    try:
        with ProgressDisplay(console) as display:
            result = run_audit(task, settings, data=data, out=out, progress=display)
        files = write_audit(result, out)
    except ConfideError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(code=2) from None
    table = Table(
        title=f"privacy audit, {task} task: {result.description}",
        title_justify="left",
        caption=legend(result),
        caption_justify="left",
    )
    for i, name in enumerate(header(result)):
        table.add_column(name, justify="left" if i in (0, 3) else "right", no_wrap=i == 3)
    for row in result.rows:
        cells = row_cells(row)
        style = "bold red" if row.violation else None
        table.add_row(*cells, style=style)
    console.print(table)
    if result.baselines:
        shown = ", ".join(f"{key.replace('_', ' ')} {value:.3g}" for key, value in result.baselines.items())
        console.print(f"baselines without the update: {shown}", highlight=False)
    console.print(f"files: {files['markdown']} (also audit.json and the figures); {time.perf_counter() - began:.1f} s")
    if result.violations:
        for message in result.violations:
            console.print(f"[bold red]BUG:[/] {message}", highlight=False)
        raise typer.Exit(code=1)
