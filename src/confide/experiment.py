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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from confide import job_plan
from confide.config import JobConfig
from confide.finetune import adapt, finetune_config
from confide.privacy.build import site_chain, site_ledger
from confide.privacy.config import PrivacyConfig
from confide.privacy.ledger import Ledger
from confide.records import Arrays
from confide.report.progress import ProgressDisplay
from confide.report.tracking import Tracking, open_tracking
from confide.server.events import Fanout
from confide.server.loop import RoundResult
from confide.server.secure_round import SecureSettings
from confide.sim import simulate
from confide.strategies.controls import model_part
from confide.workloads.base import SiteSplit, SiteTask, Workload
from confide.workloads.registry import make_workload

if TYPE_CHECKING:
    from confide.dashboard.follow import Watcher


@dataclass
class ModelRun:
    name: str
    kind: str  # federated, local, pooled, finetuned
    sites: tuple[str, ...]
    arrays: Arrays | None = None
    personal: dict[str, Arrays] = field(default_factory=dict)  # the model as each site uses it, where it differs
    curve: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    coordination_seconds: list[float] = field(default_factory=list)
    ledgers: dict[str, Ledger] = field(default_factory=dict)
    stopped: str | None = None  # why training ended before its last round (privacy budgets spent)

    def for_site(self, site: str) -> Arrays:
        assert self.arrays is not None
        return self.personal.get(site, self.arrays)


Cross = Mapping[str, Mapping[str, Mapping[str, float]]]  # model -> site (or "all") -> metric


@dataclass(frozen=True)
class JobResult:
    job: JobConfig
    sites: tuple[SiteSplit, ...]
    sizes: Mapping[str, tuple[int, int]]  # site -> (training examples, test examples)
    runs: tuple[ModelRun, ...]
    cross: Cross
    seconds: Mapping[str, float]
    metric: str
    metric_keys: tuple[str, ...]
    description: str
    # the workload that trained the models, its fields as the job ran them (prepared): the report describes each
    # model file with it and runs the models on the test splits (pictures, bootstrap intervals); None: not kept
    workload: Workload | None = None

    @property
    def federated(self) -> str:
        return next(r.name for r in self.runs if r.kind == "federated")


class Evaluator:
    """Scores a model on every site's test split, in this process (the simulator's view of all sites)."""

    def __init__(self, workload: Workload, tests: Mapping[str, Any], seed: int) -> None:
        first = next(iter(tests.values()))
        self.task = workload.task(first, first, site="evaluator", seed=seed, dp_sgd=None)
        self.tests = dict(tests)
        self.keys = workload.metric_keys
        self.size = workload.size

    def per_site(self, model: Callable[[str], Arrays]) -> dict[str, dict[str, float]]:
        """Every metric of ``model(site)`` on each site's test split, and their summary over the sites ("all", see
        :func:`with_summary`)."""
        out: dict[str, dict[str, float]] = {}
        for site, data in self.tests.items():
            out[site] = {**self.task.score(model_part(model(site)), data), "cases": float(self.size(data))}
        return with_summary(out, self.keys)

    def all_sites(self, model: Callable[[str], Arrays]) -> dict[str, float]:
        return {k: v for k, v in self.per_site(model)["all"].items() if k in self.keys}


def with_summary(per_site: Mapping[str, Mapping[str, float]], keys: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each site's metrics (with its test split's size, ``cases``) and "all": their mean over the sites (each
    hospital counts once), ``<metric>_sd`` their spread and ``<metric>_sites`` how many sites they cover. A site
    whose metric is undefined (NaN: an AUC with one class in its test split, a C-index without a comparable pair)
    is left out of the mean, and the mean is NaN when no site has the metric."""
    out = {site: dict(metrics) for site, metrics in per_site.items()}
    every: dict[str, float] = {"cases": float(sum(v["cases"] for v in out.values()))}
    for key in keys:
        values = np.array([metrics[key] for metrics in out.values()], dtype=np.float64)
        defined = values[np.isfinite(values)]
        every[key] = float(defined.mean()) if defined.size else float("nan")
        every[f"{key}_sd"] = float(defined.std()) if defined.size else float("nan")
        every[f"{key}_sites"] = float(defined.size)
    out["all"] = every
    return out


class Recorder:
    """Round events -> learning curve and progress display. ``score(global_arrays)``: the model's mean metrics
    over every site's test split, taken every ``every`` rounds."""

    def __init__(
        self,
        run: ModelRun,
        display: ProgressDisplay,
        score: Callable[[Arrays], Mapping[str, float]],
        every: int,
        scored: Callable[[int, Mapping[str, float]], None] | None = None,
    ) -> None:
        self.run, self.display, self.score, self.every, self.scored = run, display, score, every, scored

    def round_started(self, round: int, sites: list[str]) -> None:
        self.display.status(f"{self.run.name}: round {round}, {len(sites)} site(s) training")

    def site_finished(self, round: int, site: str, ok: bool, detail: str) -> None:
        self.display.status(f"{self.run.name}: round {round}, {site} {'done' if ok else 'FAILED'} ({detail})")

    def round_finished(self, result: RoundResult, global_arrays: Arrays) -> None:
        point = {"round": float(result.round), "loss": result.train_metrics.get("loss", float("nan"))}
        if result.round % self.every == 0:
            scores = self.score(global_arrays)
            point.update(scores)
            if self.scored is not None:  # the live dashboard's curve, which under DP has no other
                self.scored(result.round, scores)
        self.run.curve.append(point)
        self.run.coordination_seconds.append(result.coordination_seconds)
        self.display.advance(1, status=f"{self.run.name}: round {result.round} loss {point['loss']:.3f}")


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


def curve_every(job: JobConfig) -> int:
    """The learning curve scores the model on every site's test split every this many rounds."""
    return max(1, job.federation.rounds // 5)


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
