"""The ``confide`` command."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from confide.config import JobConfig, load_job, parse_job
from confide.errors import ConfideError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Confide: federated learning for hospitals.")
data_app = typer.Typer(no_args_is_help=True, help="Generate and inspect data.")
app.add_typer(data_app, name="data")
console = Console()
if not console.is_terminal:  # logs and CI: wide enough that the result table is never cut
    console = Console(width=max(console.width, 130))


def _fail(exc: ConfideError) -> None:
    console.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(code=2)


def _run_job(job: JobConfig) -> None:
    from confide.experiment import run_job
    from confide.report.progress import ProgressDisplay
    from confide.report.tables import rich_table
    from confide.report.writer import write_report

    start = time.perf_counter()
    with ProgressDisplay(console) as display:
        result = run_job(job, display)
    files = write_report(result, job.report.out)
    console.print()
    console.print(rich_table(result.cross, title=f"Dice on every site's held-out test cases ({job.name})"))
    console.print(f"report: {files['html']} (also {files['markdown'].name}, metrics.json, plots)")
    console.print(f"wall time: {time.perf_counter() - start:.0f} s")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="report folder (phantoms go to OUT/data)")] = Path("runs/demo"),
    sites: Annotated[int, typer.Option(min=2, help="simulated hospitals")] = 4,
    cases: Annotated[int, typer.Option(min=4, help="phantom cases per site")] = 24,
    roi: Annotated[int, typer.Option(help="side of the cubic ROI in voxels (multiple of 8)")] = 32,
    rounds: Annotated[int, typer.Option(min=1)] = 30,
    local_steps: Annotated[int, typer.Option(min=1)] = 20,
    model: Annotated[str, typer.Option(help="segresnet or unet")] = "segresnet",
    filters: Annotated[int, typer.Option(help="channels of the network's first level")] = 8,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Four simulated hospitals: local-only vs pooled vs FedAvg brain-tumour segmentation, one table."""
    try:
        job = parse_job(
            {
                "name": "demo",
                "seed": seed,
                "task": {"model": model, "init_filters": filters, "roi": [roi, roi, roi]},
                "data": {"root": str(out / "data"), "phantoms": {"sites": sites, "cases": cases}},
                "federation": {"rounds": rounds, "local_steps": local_steps, "min_sites": sites},
                "compare": ["local", "pooled"],
                "report": {"out": str(out)},
            },
            source="demo options",
        )
        _run_job(job)
    except ConfideError as exc:
        _fail(exc)


@app.command()
def simulate(
    job_file: Annotated[Path, typer.Argument(help="job file (YAML)")],
    out: Annotated[Path | None, typer.Option(help="report folder (overrides report.out)")] = None,
) -> None:
    """Run a job file in the simulator: all sites and the server in this process."""
    try:
        job = load_job(job_file)
        if out is not None:
            job = job.model_copy(update={"report": job.report.model_copy(update={"out": out})})
        _run_job(job)
    except ConfideError as exc:
        _fail(exc)


@data_app.command("phantoms")
def phantoms(
    out: Annotated[Path, typer.Option(help="folder to write one sub-folder per site into")],
    sites: Annotated[int, typer.Option(min=1)] = 4,
    cases: Annotated[int, typer.Option(min=1, help="cases per site")] = 20,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write BraTS-layout phantom cases (MNI152-based brains with tumours), sites differing as hospitals do."""
    from confide.data.phantoms import write_federation
    from confide.report.progress import ProgressDisplay

    try:
        with ProgressDisplay(console) as display:
            display.phase("generating phantoms", sites * cases)
            folders = write_federation(
                out, sites, cases, seed, on_case=lambda s, c: display.advance(1, status=f"{s} {c}")
            )
        console.print(f"wrote {sites * cases} cases in {len(folders)} site folders under {out}")
    except ConfideError as exc:
        _fail(exc)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
