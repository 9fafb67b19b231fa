"""A job on the Ray engine (``simulation.engine: ray``): the federation on a pool of Ray actors
(:mod:`confide.sim_ray`), each site's local-only and fine-tuned models trained in its actor up to
:data:`RAY_MATRIX_SITES` sites, every model scored at every site, and the result the report reads, as
:func:`confide.experiment.run_job` gives it in-process."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from confide import job_plan
from confide.config import JobConfig
from confide.privacy.ledger import Ledger
from confide.records import Arrays, Skipped
from confide.report.progress import ProgressDisplay
from confide.report.tracking import Tracking
from confide.report.writer import PER_SITE_PLOTS
from confide.run_result import JobResult, ModelRun, Recorder, curve_every, with_summary
from confide.server.events import Fanout
from confide.strategies.controls import model_part
from confide.workloads.base import SiteSplit, Workload
from confide.workloads.registry import make_workload

if TYPE_CHECKING:
    from confide.dashboard.follow import Watcher
    from confide.sim_ray import RayFederation


RAY_MATRIX_SITES = 50
"""On the Ray engine, local-only and fine-tuned models (one per site, each scored at every site) up to this many
sites."""


def _ray_rows(
    job: JobConfig, workload: Workload, federation: RayFederation, final: Arrays, display: ProgressDisplay
) -> tuple[list[ModelRun], list[ModelRun]]:
    """The local-only models (``compare: [local]``) and the fine-tuned ones (``finetune``), each trained in its
    site's actor as the in-process engine trains them."""
    locals_: list[ModelRun] = []
    tuned: list[ModelRun] = []
    if "local" in job.compare:
        display.phase("training each site alone (local-only baselines)", 1)
        t0 = time.perf_counter()
        found = federation.local_models(job_plan.start_model(job, workload))
        each = (time.perf_counter() - t0) / max(len(found), 1)  # the actors train several at once
        for site, (arrays, losses) in found.items():
            row = ModelRun(name=f"local:{site}", kind="local", sites=(site,), arrays=arrays, seconds=each)
            row.curve = [{"round": float(i), "loss": loss} for i, loss in enumerate(losses, start=1)]
            locals_.append(row)
        display.advance(1, status=f"{len(found)} local-only models")
    if job.finetune.enabled:
        display.phase("fine-tuning at each site", 1)
        t0 = time.perf_counter()
        adapted = federation.finetuned(final)
        each = (time.perf_counter() - t0) / max(len(adapted), 1)
        for site, (arrays, loss) in adapted.items():
            row = ModelRun(name=f"finetuned:{site}", kind="finetuned", sites=(site,), arrays=arrays, seconds=each)
            row.curve.append({"round": 0.0, "loss": loss})
            tuned.append(row)
        display.advance(1, status=f"{len(adapted)} fine-tuned models")
    return locals_, tuned


def run_many_sites(
    job: JobConfig, display: ProgressDisplay, tracking: Tracking | None = None, watch: Watcher | None = None
) -> JobResult:
    """A job on the Ray engine (``simulation.engine: ray``, :mod:`confide.sim_ray`): the federated run with its
    learning curve, then the federated model scored at every site, as the site uses it, on its own test split (the
    model's whole row of the cross-site matrix), each site's data read and scored in its actor. Up to
    :data:`RAY_MATRIX_SITES` sites, also each site's local-only model (``compare: [local]``) and its fine-tuned
    one, trained in its actor and scored at every site, as in-process. Not run, and said in the result's
    description: the pooled baseline (it gathers every site's data in one process), and above that many sites the
    local-only and fine-tuned models (a row each: the matrix grows with the square of the sites)."""
    from confide.sim_ray import RayFederation

    t0 = time.perf_counter()
    workload = make_workload(job.task)
    display.phase("reading data", 1)
    names = workload.simulated_sites(job.data, display.status)
    keys = tuple(workload.metric_keys)
    run = ModelRun(name=job.federation.strategy, kind="federated", sites=tuple(names))
    with RayFederation(job, names) as federation:
        display.advance(1, status=f"{len(names)} sites on {federation.actors} Ray actor(s)")
        t_data = time.perf_counter() - t0

        def mean_scores(arrays: Arrays) -> dict[str, float]:
            every = with_summary(federation.scores(arrays), keys)["all"]
            return {key: every[key] for key in keys}

        display.phase("training", job.federation.rounds)
        strategy = job_plan.build_strategy(
            job, sites=len(names), batch=workload.batch_size(), norm_names=workload.norm_names
        )
        loop = job_plan.loop_settings(job, sites=len(names), secure=None, deployed=False)
        t1 = time.perf_counter()
        done = federation.run(
            strategy,
            job_plan.initial_global(job, workload),
            loop,
            Fanout(
                Recorder(
                    run, display, mean_scores, curve_every(job), scored=watch.scored if watch is not None else None
                ),
                tracking.rounds(run.name, curve=run.curve) if tracking is not None else None,
            ),
            watch=watch,
        )
        run.seconds = time.perf_counter() - t1
        run.arrays, run.stopped = model_part(done.arrays), done.history.stopped
        display.phase("scoring the federated model at every site", 1)
        cross = {run.name: with_summary(federation.scores(done.arrays), keys)}
        display.advance(1)
        matrix = len(names) <= RAY_MATRIX_SITES
        locals_, tuned = _ray_rows(job, workload, federation, done.arrays, display) if matrix else ([], [])
        if locals_ or tuned:
            display.phase("cross-site evaluation", len(locals_) + len(tuned))
            for row in (*locals_, *tuned):
                assert row.arrays is not None
                cross[row.name] = with_summary(federation.scores(row.arrays, personal=False), keys)
                display.advance(1, status=row.name)
        reports = federation.reports()
        actors = federation.actors
    run.ledgers = {
        r.name: Ledger.from_document(r.name, r.ledger, delta=float(r.ledger["delta"]), budget=r.ledger["budget"])
        for r in reports
        if r.ledger is not None
    }
    above = f" (above {RAY_MATRIX_SITES} sites)"
    skipped = [
        what
        for what, asked in (
            ("the pooled baseline (it gathers every site's data in one process)", "pooled" in job.compare),
            ("the local-only baselines" + above, "local" in job.compare and not matrix),
            ("fine-tuning at each site" + above, job.finetune.enabled and not matrix),
        )
        if asked
    ]
    note = (
        f"; simulated on Ray: {len(names)} sites on {actors} actor(s), a fraction {job.federation.fraction:g} of "
        "them training each round; every model is scored at every site on its own test split"
        + (f"; not run on this engine: {' and '.join(skipped)}" if skipped else "")
    )
    if job.report.plots and len(names) > PER_SITE_PLOTS:
        note += f"; per-site plots left out above {PER_SITE_PLOTS} sites (the learning curves are drawn)"
    seconds = {"data": t_data, "total": time.perf_counter() - t0, f"train:{run.name}": run.seconds}
    seconds.update({f"train:{row.name}": row.seconds for row in (*locals_, *tuned)})
    return JobResult(
        job=job,
        sites=tuple(
            SiteSplit(r.name, None, None, tuple(Skipped(item, why) for item, why in r.skipped), tuple(r.notes))
            for r in reports
        ),
        sizes={r.name: (r.train, r.test) for r in reports},
        runs=(*locals_, run, *tuned),
        cross=cross,
        seconds=seconds,
        metric=workload.metric,
        metric_keys=keys,
        description=workload.describe() + note,
        workload=workload,
    )
