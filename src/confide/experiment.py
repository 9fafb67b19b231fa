"""A job from start to finish: data, the federated run, the baselines, fine-tuning and the cross-site evaluation.

Every model gets the same budget of local optimisation steps (rounds x local_steps at each of its
sites) and the same hyper-parameters; pooled training takes batches as large as the federation's
combined batch, so it processes as many examples per step as all sites together:

- ``federated``: all sites, through the simulator and the job's strategy;
- ``local:<site>``: a federation of that site alone (what the hospital could do by itself);
- ``pooled``: one site holding every site's training cases (what sharing the data would give);
- ``finetuned:<site>``: the federated model, adapted by that site on its own training split.

Each final model is then evaluated on every site's held-out test split. Under FedBN (and SCAFFOLD), the federated
model a site uses is its personal version: its own normalisation layers, no control variate.

What a task is (brain tumours, mammography, tables, slides) lives in its workload (:mod:`confide.workloads`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from confide import job_plan
from confide.config import JobConfig
from confide.finetune import adapt, finetune_config
from confide.privacy.build import site_chain, site_ledger
from confide.privacy.config import PrivacyConfig
from confide.records import Arrays
from confide.report.progress import ProgressDisplay
from confide.report.tracking import Tracking, open_tracking
from confide.run_result import Cross as Cross
from confide.run_result import Evaluator as Evaluator
from confide.run_result import JobResult as JobResult
from confide.run_result import ModelRun as ModelRun
from confide.run_result import Recorder as Recorder
from confide.run_result import curve_every as curve_every
from confide.run_result import with_summary as with_summary
from confide.server.events import Fanout
from confide.server.secure_round import SecureSettings
from confide.sim import simulate
from confide.strategies.controls import model_part
from confide.workloads.base import SiteTask, Workload
from confide.workloads.registry import make_workload

if TYPE_CHECKING:
    from confide.dashboard.follow import Watcher


def _train_run(
    job: JobConfig,
    workload: Workload,
    run: ModelRun,
    train: Mapping[str, Any],
    evaluator: Evaluator,
    display: ProgressDisplay,
    n_sites: int,
    tests: Mapping[str, Any] | None = None,
    tracking: Tracking | None = None,
    watch: Watcher | None = None,
) -> dict[str, SiteTask]:
    """Train one model; return its sites' tasks (they hold what a site keeps between rounds)."""
    t0 = time.perf_counter()
    private = run.kind == "federated"  # baselines keep their data where it is: nothing leaves, nothing to protect
    privacy = job_plan.simulated_privacy(job, len(run.sites)) if private else PrivacyConfig()
    # the federated run's sites hold their test splits, for federated evaluation (federation.evaluate_every)
    own_test = dict(tests or {}) if private and job.federation.evaluate_every else {}
    tasks = {
        site: workload.task(train[site], own_test.get(site), site=site, seed=job.seed, dp_sgd=privacy.dp_sgd)
        for site in run.sites
    }
    batch = workload.batch_size() * (n_sites if run.kind == "pooled" else 1)
    strategy = job_plan.build_strategy(
        job, kind=run.kind, sites=len(tasks), batch=batch, norm_names=workload.norm_names
    )
    ledgers = {site: site_ledger(privacy, site, None) for site in tasks}
    chains = {site: site_chain(privacy) for site in tasks}

    def personal(site: str, arrays: Arrays) -> Arrays:
        task = tasks.get(site)
        return task.personal(arrays) if task is not None else model_part(arrays)

    watched = watch if run.kind == "federated" else None  # the live dashboard follows the federation only
    recorder = Recorder(
        run,
        display,
        lambda arrays: evaluator.all_sites(lambda site: personal(site, arrays)),
        curve_every(job),
        scored=watched.scored if watched is not None else None,
    )
    secure = SecureSettings() if privacy.secure_aggregation else None  # the simulator adds its CA's revocation list
    loop = job_plan.loop_settings(job, sites=len(tasks), secure=secure, deployed=False)
    start = job_plan.initial_global(job, workload) if run.kind == "federated" else job_plan.start_model(job, workload)
    # tracking is told after the recorder, whose curve point of the round it reads
    tracked = tracking.rounds(run.name, ledgers=ledgers, curve=run.curve) if tracking is not None else None
    events = Fanout(recorder, tracked)
    result = simulate(
        strategy, tasks, start, loop, events=events, chains=chains, ledgers=ledgers, job=job.name, watch=watched
    )
    run.ledgers = {site: ledger for site, ledger in ledgers.items() if ledger is not None}
    run.stopped = result.history.stopped
    run.arrays = model_part(result.arrays)
    if run.kind == "federated":
        run.personal = {site: task.personal(result.arrays) for site, task in tasks.items()}
    run.seconds = time.perf_counter() - t0
    return tasks


def finetune(
    job: JobConfig,
    workload: Workload,
    federated: ModelRun,
    train: Mapping[str, Any],
    display: ProgressDisplay,
) -> list[ModelRun]:
    """Each site adapts the federated model (as it uses it) to its own training split: ``finetune.steps`` local
    steps, plain (no privacy filter: the adapted model stays at its hospital; this simulation evaluates it on every
    site to show how far it still generalises)."""
    config = finetune_config(job, workload)
    runs: list[ModelRun] = []
    for site in federated.sites:
        t0 = time.perf_counter()
        task = workload.task(train[site], None, site=site, seed=job.seed + 1, dp_sgd=None)
        tuned, loss = adapt(task, federated.for_site(site), config)
        run = ModelRun(name=f"finetuned:{site}", kind="finetuned", sites=(site,), arrays=tuned)
        run.curve.append({"round": 0.0, "loss": loss})
        run.seconds = time.perf_counter() - t0
        runs.append(run)
        display.advance(1, status=f"fine-tuning at {site}")
    return runs


def plan_runs(job: JobConfig, site_names: Sequence[str]) -> list[ModelRun]:
    runs: list[ModelRun] = []
    if "local" in job.compare:
        runs += [ModelRun(name=f"local:{s}", kind="local", sites=(s,)) for s in site_names]
    if "pooled" in job.compare:
        runs.append(ModelRun(name="pooled", kind="pooled", sites=("pooled",)))
    runs.append(ModelRun(name=job.federation.strategy, kind="federated", sites=tuple(site_names)))
    return runs


def run_job(job: JobConfig, display: ProgressDisplay, watch: Watcher | None = None) -> JobResult:
    """Run the job's federation and its baselines, fine-tune at each site, then evaluate every model on every
    site. On the Ray engine (``simulation.engine: ray``): see :func:`confide.experiment_ray.run_many_sites`.
    With ``report.tensorboard`` or ``report.mlflow``, tracked as it runs (:mod:`confide.report.tracking`).
    ``watch`` (the live dashboard) follows the federated run, on either engine."""
    with open_tracking(job, where="simulation") as tracking:
        if job.simulation.engine == "ray":
            from confide.experiment_ray import run_many_sites

            result = run_many_sites(job, display, tracking, watch)
        else:
            result = _run_here(job, display, tracking, watch)
        tracking.finish_job(result)
    return result


def _run_here(
    job: JobConfig, display: ProgressDisplay, tracking: Tracking | None = None, watch: Watcher | None = None
) -> JobResult:
    """The job in this process: its federation, baselines, fine-tuning and cross-site evaluation."""
    t0 = time.perf_counter()
    workload = make_workload(job.task)
    display.phase("reading data", 1)
    sites = workload.load_sites(job.data, job.seed, display.status)
    display.advance(1, status=f"{len(sites)} sites")
    t_data = time.perf_counter() - t0
    train = {s.name: s.train for s in sites}
    tests = {s.name: s.test for s in sites}
    if "pooled" in job.compare:
        train["pooled"] = workload.pool([s.train for s in sites])
    evaluator = Evaluator(workload, tests, job.seed)
    runs = plan_runs(job, [s.name for s in sites])
    display.phase("training", job.federation.rounds * len(runs))
    for run in runs:
        _train_run(
            job,
            workload,
            run,
            train,
            evaluator,
            display,
            n_sites=len(sites),
            tests=tests,
            tracking=tracking,
            watch=watch,
        )
    federated = next(r for r in runs if r.kind == "federated")
    if job.finetune.enabled:
        display.phase("fine-tuning at each site", len(sites))
        runs += finetune(job, workload, federated, train, display)
    display.phase("cross-site evaluation", len(runs))
    cross: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        cross[run.name] = evaluator.per_site(run.for_site)
        display.advance(1, status=run.name)
    seconds = {"data": t_data, "total": time.perf_counter() - t0}
    seconds.update({f"train:{run.name}": run.seconds for run in runs})
    return JobResult(
        job=job,
        sites=tuple(sites),
        sizes={s.name: (workload.size(s.train), workload.size(s.test)) for s in sites},
        runs=tuple(runs),
        cross=cross,
        seconds=seconds,
        metric=workload.metric,
        metric_keys=tuple(workload.metric_keys),
        description=workload.describe(),
        workload=workload,
    )
