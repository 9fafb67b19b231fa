"""The ``confide`` command."""

from __future__ import annotations

import functools
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ParamSpec

import typer
from rich.markup import escape

from confide.cli_audit import audit as privacy_audit
from confide.cli_common import clean_errors as _clean_errors
from confide.cli_common import console
from confide.cli_common import verbose as _verbose
from confide.cli_features import features_app
from confide.cli_predict import export as export_model
from confide.cli_predict import predict as predict_model
from confide.cli_site import privacy_report, site
from confide.cli_status import DashboardHost, DashboardPort
from confide.cli_status import status as dashboard_status
from confide.config import JobConfig, load_job, parse_job
from confide.errors import ConfigError

if TYPE_CHECKING:
    from confide.dashboard.follow import Watcher

P = ParamSpec("P")
app = typer.Typer(add_completion=False, no_args_is_help=True, help="Confide: federated learning for hospitals.")
data_app = typer.Typer(no_args_is_help=True, help="Generate and inspect data.")
app.add_typer(data_app, name="data")
privacy_app = typer.Typer(no_args_is_help=True, help="Privacy ledgers and policies.")
app.add_typer(privacy_app, name="privacy")
privacy_app.command("audit")(privacy_audit)
app.add_typer(features_app, name="features")


def _show_version(asked: bool) -> None:
    if asked:
        from confide.model_file import confide_version

        console.print(f"confide {confide_version()}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", is_eager=True, callback=_show_version, help="print Confide's version and exit"),
    ] = False,
) -> None:
    pass


WIDEST_TABLE = 12
"""Sites whose columns the terminal's result tables show; above it, each model's mean over the sites."""


def _run_job(job: JobConfig, watch: Watcher | None = None) -> None:
    from confide.experiment import run_job
    from confide.report.progress import ProgressDisplay
    from confide.report.tables import mean_text, rich_gains, rich_table
    from confide.report.tracking import where_tracked
    from confide.report.writer import write_report

    start = time.perf_counter()
    with ProgressDisplay(console) as display:
        result = run_job(job, display, watch)
    files = write_report(result, job.report.out)
    console.print()
    label = result.metric.replace("_", " ")
    if len(result.sites) <= WIDEST_TABLE:
        console.print(
            rich_table(result.cross, result.metric, title=f"{label} on every site's held-out test split ({job.name})")
        )
        console.print(
            rich_gains(
                result.cross,
                result.metric,
                result.federated,
                title=f"what federation gained each site ({label}, own test split)",
            )
        )
    else:  # a column per site would not fit: the mean over the sites, per model (every site in the report)
        for name, per_site in result.cross.items():
            every = per_site["all"]
            console.print(
                f"{name}: {label} {mean_text(every, result.metric, len(result.sites))} (sd "
                f"{every.get(f'{result.metric}_sd', float('nan')):.3f}) over {len(result.sites)} sites' test splits",
                markup=False,
            )
    if job.simulation.engine == "ray":  # what this engine ran, and what it left out
        console.print(result.description, highlight=False, markup=False)
    for run in result.runs:
        if run.stopped:
            console.print(
                f"[bold yellow]training stopped early ({escape(run.name)}):[/] {escape(run.stopped)}", highlight=False
            )
    console.print(f"report: {files['html']} (also {files['markdown'].name}, metrics.json, plots)")
    for line in where_tracked(job):  # report.tensorboard, report.mlflow
        console.print(f"tracked: {line}", markup=False, highlight=False)
    console.print(f"wall time: {time.perf_counter() - start:.0f} s")


@app.command()
@_clean_errors
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
    tensorboard: Annotated[bool, typer.Option(help="track every round for TensorBoard (OUT/tensorboard)")] = False,
    mlflow: Annotated[
        str | None, typer.Option(help="track the job in MLflow: a folder or a tracking URI (report.mlflow)")
    ] = None,
) -> None:
    """Four simulated hospitals: local-only vs pooled vs FedAvg brain-tumour segmentation, one table."""
    job = parse_job(
        {
            "name": "demo",
            "seed": seed,
            "task": {
                "model": model,
                "init_filters": filters,
                "roi": [roi, roi, roi],
                "phantoms": {"sites": sites, "cases": cases, "seed": seed},
            },
            "data": {"root": str(out / "data")},
            "federation": {"rounds": rounds, "local_steps": local_steps, "min_sites": sites},
            "compare": ["local", "pooled"],
            "report": {"out": str(out), "tensorboard": tensorboard, "mlflow": False if mlflow is None else mlflow},
        },
        source="demo options",
    )
    _run_job(job)


@app.command()
@_clean_errors
def simulate(
    job_file: Annotated[Path, typer.Argument(help="job file (YAML)")],
    out: Annotated[Path | None, typer.Option(help="report folder (overrides report.out)")] = None,
    data: Annotated[Path | None, typer.Option(help="the data (overrides data.root): a folder, or a CSV table")] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="inprocess (every site in this process: small jobs, with baselines and the cross-site matrix) or "
            "ray (sites on a pool of Ray actors: many sites, the federated model only; needs the ray extra); "
            "overrides simulation.engine"
        ),
    ] = None,
    actors: Annotated[
        int | None, typer.Option(min=1, help="ray: the pool of actors (overrides simulation.actors)")
    ] = None,
    dashboard: DashboardPort = None,
    dashboard_host: DashboardHost = "127.0.0.1",
) -> None:
    """Run a job file in the simulator: the server in this process, the sites in it too or on Ray actors."""
    from confide.config import ENGINES

    job = load_job(job_file)
    if out is not None:
        job = job.model_copy(update={"report": job.report.model_copy(update={"out": out})})
    if data is not None:
        job = job.model_copy(update={"data": job.data.model_copy(update={"root": data})})
    if engine is not None or actors is not None:
        if engine is not None and engine not in ENGINES:
            raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        simulation = job.simulation.model_dump()
        simulation.update({k: v for k, v in (("engine", engine), ("actors", actors)) if v is not None})
        job = parse_job({**job.model_dump(), "simulation": simulation}, source=f"{job_file} with the options given")
        if actors is not None and job.simulation.engine != "ray":
            raise ConfigError("--actors sets the Ray engine's pool: give it with --engine ray (or simulation.engine)")
    from confide.dashboard.live import launch

    say = functools.partial(console.print, markup=False, highlight=False)
    with launch(job.report.out, job, mode="simulation", port=dashboard, host=dashboard_host, say=say) as watch:
        _run_job(job, watch)


@app.command("new")
@_clean_errors
def new(
    name: Annotated[Path, typer.Argument(help="the folder to create (its last part names the task and the job)")],
) -> None:
    """Start your own task: a folder with a working task.py (three functions to fill in), job.yaml, a README and
    generated data for three hospitals. Run it with `confide simulate NAME/job.yaml`."""
    from confide.new_task import new_task

    written = new_task(name)
    for path in written:
        console.print(f"wrote {path}")
    console.print(f"next: confide simulate {name}/job.yaml   (then edit {name}/task.py: see {name}/README.md)")


@data_app.command("phantoms")
@_clean_errors
def phantoms(
    out: Annotated[Path, typer.Option(help="folder to write one sub-folder per site into")],
    sites: Annotated[int, typer.Option(min=1)] = 4,
    cases: Annotated[int, typer.Option(min=1, help="cases per site")] = 20,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write BraTS-layout phantom cases (MNI152-based brains with tumours), sites differing as hospitals do."""
    from confide.kinds.brain_tumor.phantom_writer import write_federation
    from confide.report.progress import ProgressDisplay

    with ProgressDisplay(console) as display:
        display.phase("generating phantoms", sites * cases)
        folders = write_federation(out, sites, cases, seed, on_case=lambda s, c: display.advance(1, status=f"{s} {c}"))
    console.print(f"wrote {sites * cases} cases in {len(folders)} site folders under {out}")


@data_app.command("images")
@_clean_errors
def images(
    out: Annotated[Path, typer.Option(help="a new folder to write one sub-folder per site into")],
    sites: Annotated[int, typer.Option(min=1, max=32)] = 3,
    patients: Annotated[int, typer.Option(min=2, help="patients per site, two images (eyes) each")] = 60,
    size: Annotated[int, typer.Option(min=32, max=1024, help="side of the images (each camera varies it)")] = 128,
    test_fraction: Annotated[float, typer.Option(min=0.01, max=0.99, help="share of patients marked test")] = 0.25,
    image_format: Annotated[str, typer.Option("--format", help="png, jpeg or mixed")] = "png",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write colour images with five ordinal grades (fundus-like), each site its own camera, with labels.csv
    (file,label,split,patient) for the image_classification task."""
    from confide.errors import ConfigError
    from confide.kinds.images.synthetic import FORMATS, write_grades

    fmt = FORMATS.get(image_format)
    if fmt is None:
        raise ConfigError(f"--format must be one of {sorted(FORMATS)}, got {image_format!r}")
    folders = write_grades(
        out, sites=sites, patients=patients, size=size, test_fraction=test_fraction, fmt=fmt, seed=seed
    )
    console.print(f"wrote {sites * patients * 2} images of five grades in {len(folders)} site folders under {out}")


@app.command("provision")
@_clean_errors
def provision_cmd(
    federation: Annotated[Path, typer.Argument(help="federation file (YAML): name, server host/port, sites")],
    out: Annotated[Path, typer.Option(help="folder for the CA, the server kit and one kit per site")],
) -> None:
    """Create a federation's CA, server certificate and one start-up kit per site."""
    from confide.provision import load_federation, provision

    provision(load_federation(federation), out)
    console.print(f"federation provisioned in {out}: server kit {out / 'server'}, site kits under {out / 'sites'}")
    console.print(f"keep {out / 'ca'} offline; hand each hospital its own folder under sites/")


@app.command("add-site")
@_clean_errors
def add_site_cmd(
    name: Annotated[str, typer.Argument(help="the new site's name")],
    out: Annotated[Path, typer.Option(help="the federation folder made by `confide provision`")],
) -> None:
    """Add a site to a provisioned federation: a new kit signed by its CA; copy server/roster.json to the server."""
    from confide.provision import add_site

    kit = add_site(out, name)
    console.print(f"kit for {name}: {kit}; the server admits it once it has {out / 'server' / 'roster.json'}")


@app.command("revoke-site")
@_clean_errors
def revoke_site_cmd(
    name: Annotated[str, typer.Argument(help="the site to revoke")],
    out: Annotated[Path, typer.Option(help="the federation folder made by `confide provision`")],
    reason: Annotated[str, typer.Option(help="recorded in the manifest")] = "",
) -> None:
    """Revoke a site's certificate; copy server/revoked.json to the server, which re-reads it."""
    from confide.provision import revoke_site

    path = revoke_site(out, name, reason)
    console.print(f"{name} revoked; the server refuses it once it has {path}")


@app.command()
@_clean_errors
def server(
    job_file: Annotated[Path, typer.Argument(help="job file (YAML)")],
    kit: Annotated[Path, typer.Option(help="the server kit (server.yaml, certificates, key)")],
    resume: Annotated[bool, typer.Option(help="continue from the last completed round's checkpoint")] = False,
    port: Annotated[int | None, typer.Option(help="override the kit's port")] = None,
    host: Annotated[
        str | None, typer.Option(help="address to listen on (default: the kit's host; 0.0.0.0 for every interface)")
    ] = None,
    wait: Annotated[float, typer.Option(help="seconds to wait for the quorum of sites to join")] = 600.0,
    verbose: Annotated[bool, typer.Option(help="show joins, rounds, retries and refusals as they happen")] = False,
    dashboard: DashboardPort = None,
    dashboard_host: DashboardHost = "127.0.0.1",
) -> None:
    """Serve a job to the federation's sites over gRPC with mutual TLS (sites dial in)."""
    _verbose(verbose)
    from confide.dashboard.live import launch
    from confide.deploy import serve
    from confide.job_plan import initial_global
    from confide.workloads.registry import make_workload

    job = load_job(job_file)
    say = functools.partial(console.print, markup=False, highlight=False)
    with launch(kit, job, mode="deployment", port=dashboard, host=dashboard_host, say=say) as watch:
        final = serve(
            kit,
            job,
            # a job that gives its initial model needs no workload (and no torch) at the server
            initial=lambda j: initial_global(j, None if j.initial_model is not None else make_workload(j.task)),
            resume=resume,
            port=port,
            host=host,
            wait_s=wait,
            on_listen=lambda p: console.print(f"listening on port {p}; waiting for {job.federation.min_sites} site(s)"),
            dashboard=watch,
        )
    console.print(f"done: final global model {final}")
    from confide.report.tracking import where_tracked

    for line in where_tracked(job):  # report.tensorboard, report.mlflow
        console.print(f"tracked: {line}", markup=False, highlight=False)


@app.command()
@_clean_errors
def init(
    job_file: Annotated[Path, typer.Argument(help="job file (YAML)")],
    out: Annotated[
        Path | None, typer.Option(help="where to write the model (default: initial.safetensors beside the job file)")
    ] = None,
) -> None:
    """Write the job's untrained model (its task's, for the job's seed) as a safetensors file, for the job's
    initial_model: a server given it starts without building the model, so without torch."""
    from confide.serde_container import save_arrays
    from confide.workloads.registry import make_workload

    job = load_job(job_file)
    target = out if out is not None else Path(job_file).resolve().parent / "initial.safetensors"
    model = make_workload(job.task).initial(job.seed)
    save_arrays(target, model)
    size = sum(value.nbytes for _, value in model.items())
    console.print(f"wrote {target} ({len(model)} arrays, {size / 1e6:.1f} MB)")
    console.print(f"next: add `initial_model: {target.name}` to {job_file} (a path relative to the job file)")


# commands written in modules of their own, listed after those above in --help
app.command("site")(site)
app.command("status")(dashboard_status)
app.command("predict")(predict_model)
app.command("export")(export_model)
privacy_app.command("report")(privacy_report)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the console shows warnings; the server's trail file takes INFO
        handler.setLevel(logging.WARNING)
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
