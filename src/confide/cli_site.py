"""`confide site` (a hospital's side of a deployment: the job shown and approved, training, the final model kept)
and `confide privacy report` (a run's ledgers, or a site's kit: its ledger across jobs and what left the site)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from confide.cli_common import clean_errors, console
from confide.cli_common import verbose as verbose_lines
from confide.config import JobConfig


@clean_errors
def site(
    kit: Annotated[Path, typer.Option(help="this site's kit (site.yaml, certificate, key, CA)")],
    data: Annotated[Path, typer.Option(help="this site's own data (its folder of cases, images or slides; its table)")],
    server_address: Annotated[str | None, typer.Option("--server", help="override the kit's host:port")] = None,
    models: Annotated[
        Path | None,
        typer.Option(
            help="where the site keeps each job's final and fine-tuned models, in JOB/RUN/ (default: KIT/models)"
        ),
    ] = None,
    code: Annotated[
        Path | None,
        typer.Option(
            help="this site's own copy of the job's task code (task.name python): the job's entry is imported "
            "from this folder only; the server never sends code"
        ),
    ] = None,
    data_site: Annotated[
        str | None,
        typer.Option(
            help="which rows or folder of --data are this site's own, as the data names them (a table's site "
            "value such as 'VA Long Beach'); default: data_site in KIT/site.yaml, else the site's name"
        ),
    ] = None,
    approve: Annotated[
        bool,
        typer.Option(
            help="run the job the server sends this time (it is shown first); without it the site runs only a job "
            "whose digest KIT/approved_jobs.txt lists, and declines any other"
        ),
    ] = False,
    ask: Annotated[
        bool | None,
        typer.Option(
            help="ask the operator, after showing it, whether to run a job that is not approved (default: ask when "
            "this command's input is a terminal; --no-ask declines such a job without asking)"
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option(help="show joins, instructions, retries and reconnects as they happen")
    ] = False,
) -> None:
    """Run this hospital's side of a federation: dial out, show the job and run it only if approved, train on local
    data, send filtered updates (each logged in KIT/audit/releases.jsonl); at the end, keep the final model and
    fine-tune it on the site's own training split."""
    import shlex

    from confide.site.consent import Approval

    verbose_lines(verbose)
    given = {"--server": server_address, "--models": models, "--code": code, "--data-site": data_site}
    again = ["confide", "site", "--kit", str(kit), "--data", str(data)]
    again += [part for flag, value in given.items() if value is not None for part in (flag, str(value))]
    asking = sys.stdin.isatty() if ask is None else ask
    approval = Approval.of_kit(
        kit, approve=approve, again=shlex.join([*again, "--approve"]), prompt=input if asking else None
    )
    from rich.table import Table

    from confide.deploy_site import private_runner, read_kit_config, run_site, site_code, site_privacy
    from confide.job_plan import site_task
    from confide.records import Arrays
    from confide.report.tables import score_text
    from confide.site.finish import keep_and_adapt, site_place
    from confide.site.runner import SiteRunner
    from confide.workloads.base import SiteTask

    tasks: dict[str, SiteTask] = {}
    places: dict[str, Any] = {}  # the site's own data as its task read them (for preprocessing.json)

    def runner(name: str, job: JobConfig) -> SiteRunner:
        job = site_code(job, code)
        own = data_site or str(read_kit_config(kit, "site.yaml", ("site",)).get("data_site") or name)
        named = "" if own == name else f" (its data named {own!r})"
        console.print(f"site {name}{named}: preparing its data in {data} for job {job.name}", markup=False)
        tasks["mine"] = site_task(job, data, own, site_privacy(kit, job), console.print)
        places["mine"] = site_place(job, data, own)
        return private_runner(kit, name, job, tasks["mine"])

    kept_final: list[bool] = []

    def finish(job: JobConfig, final: Arrays) -> None:
        kept_final.append(True)
        console.print("the job is done: keeping the final model and fine-tuning it on this site's training split")
        dialled = server_address or str(read_kit_config(kit, "site.yaml", ("server",))["server"])
        kept = keep_and_adapt(
            tasks["mine"], job, final, models or kit / "models", server=dialled, place=places.get("mine")
        )
        table = Table("model", *next(iter(kept.scores.values())), title="this site's own test split")
        for name, values in kept.scores.items():
            table.add_row(name, *(score_text(v, metric) for metric, v in values.items()))
        console.print(table)
        console.print(
            f"kept in {kept.folder}: {kept.global_model.name}" + (f", {kept.finetuned.name}" if kept.finetuned else "")
        )

    say = functools.partial(console.print, markup=False, highlight=False)  # the server's words, never markup
    answered = run_site(kit, runner, address=server_address, on_final=finish, approval=approval, say=say)
    if not kept_final:
        console.print(
            "the server kept the final model (the job's federation.send_final_model is false, or the server left "
            "before this site collected it): fetch it from the server's report folder"
        )
    console.print(f"job done: answered {answered} instruction(s)")


@clean_errors
def privacy_report(
    run: Annotated[Path, typer.Argument(help="a run's report folder (report.out), or a site's kit")],
) -> None:
    """Print the privacy ledger of every site of a run, or of a site's kit across all its jobs: mechanism,
    parameters, epsilon per round and in total; for a kit, also what its release log says left the site."""
    from confide.privacy.ledger import read_ledgers
    from confide.report.tables import ledger_matrix, ledger_rows, text_table
    from confide.site.release_log import RELEASES, read_releases, release_rows, summarize

    ledgers = read_ledgers(run)
    if not ledgers:  # a kit whose jobs spent no privacy
        console.print(f"{run}: no privacy spent (no ledger.json: no job this site ran spent privacy)")
    else:
        console.print(text_table(*ledger_rows(ledgers), title=f"privacy ledger of {run}"))  # names as text
        console.print(text_table(*ledger_matrix(ledgers), title="epsilon spent by the end of each round"))
    for ledger in ledgers:
        entries = ledger.get("entries") or []
        total = entries[-1]["epsilon_total"] if entries else 0.0
        budget = ledger.get("budget")
        left = "" if budget is None else f" of a budget of {budget:g}"
        console.print(f"{ledger['site']}: epsilon {total:.4g} at delta {ledger['delta']:g}{left}", markup=False)
    if (run / RELEASES).is_file():  # a kit's log of what left the site
        released = release_rows(summarize(read_releases(run / RELEASES)))
        console.print(text_table(*released, title=f"what left the site, by job ({run / RELEASES})"))
