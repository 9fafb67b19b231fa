"""A job from start to finish: data, the federated run, the baselines, and the cross-site evaluation.

Every model gets the same budget of local optimisation steps (rounds x local_steps at each of its
sites) and the same hyper-parameters; pooled training takes batches as large as the federation's
combined batch, so it processes as many examples per step as all sites together:

- ``federated``: all sites, through the simulator and the job's strategy;
- ``local:<site>``: a federation of that site alone (what the hospital could do by itself);
- ``pooled``: one site holding every site's training cases (what sharing the data would give).

Each final model is then evaluated on every site's held-out test cases.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confide.config import JobConfig
from confide.data.federation import SiteCases, load_site, site_folders
from confide.data.phantom_writer import write_federation
from confide.data.preprocess import PreprocessConfig
from confide.privacy.build import site_chain, site_ledger
from confide.privacy.config import PrivacyConfig
from confide.privacy.ledger import Ledger
from confide.records import Arrays
from confide.report.progress import ProgressDisplay
from confide.server.loop import LoopConfig, RoundResult
from confide.server.secure_round import SecureSettings
from confide.sim import simulate
from confide.strategies import make_strategy
from confide.tasks.brain_tumor import BrainTumorTask, SegData, initial_arrays
from confide.tasks.seg_metrics import REGIONS

METRIC_KEYS = (*(f"dice_{r}" for r in REGIONS), "dice_mean")


@dataclass
class ModelRun:
    name: str
    kind: str
    sites: tuple[str, ...]
    arrays: Arrays | None = None
    curve: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    coordination_seconds: list[float] = field(default_factory=list)
    ledgers: dict[str, Ledger] = field(default_factory=dict)


@dataclass(frozen=True)
class JobResult:
    job: JobConfig
    sites: tuple[SiteCases, ...]
    runs: tuple[ModelRun, ...]
    cross: Mapping[str, Mapping[str, Mapping[str, float]]]  # model -> site (or "all") -> metric
    seconds: Mapping[str, float]


class _Recorder:
    """Round events -> learning curve and progress display."""

    def __init__(self, run: ModelRun, display: ProgressDisplay, evaluate: SegEvaluator, every: int) -> None:
        self.run, self.display, self.evaluate, self.every = run, display, evaluate, every

    def round_started(self, round: int, sites: list[str]) -> None:
        self.display.status(f"{self.run.name}: round {round}, {len(sites)} site(s) training")

    def site_finished(self, round: int, site: str, ok: bool, detail: str) -> None:
        self.display.status(f"{self.run.name}: round {round}, {site} {'done' if ok else 'FAILED'} ({detail})")

    def round_finished(self, result: RoundResult, global_arrays: Arrays) -> None:
        point = {"round": float(result.round), "loss": result.train_metrics.get("loss", float("nan"))}
        if result.round % self.every == 0:
            point.update(self.evaluate.all_sites(global_arrays))
        self.run.curve.append(point)
        self.run.coordination_seconds.append(result.coordination_seconds)
        self.display.advance(1, status=f"{self.run.name}: round {result.round} loss {point['loss']:.3f}")


class SegEvaluator:
    """Scores a model on every site's test cases, in this process (the simulator's view of all sites)."""

    def __init__(self, job: JobConfig, tests: Mapping[str, SegData]) -> None:
        self.task = BrainTumorTask(job.task, None, None, site="evaluator", seed=job.seed)
        self.tests = dict(tests)

    def per_site(self, arrays: Arrays) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        total = sum(len(d) for d in self.tests.values())
        pooled = dict.fromkeys(METRIC_KEYS, 0.0)
        for site, data in self.tests.items():
            scores = self.task.score(arrays, data)
            out[site] = {**scores, "cases": float(len(data))}
            for key in METRIC_KEYS:
                pooled[key] += scores[key] * len(data) / total
        out["all"] = {**pooled, "cases": float(total)}
        return out

    def all_sites(self, arrays: Arrays) -> dict[str, float]:
        return {k: v for k, v in self.per_site(arrays)["all"].items() if k != "cases"}


def prepare_data(job: JobConfig, display: ProgressDisplay) -> list[SiteCases]:
    root = job.data.root
    if job.data.phantoms is not None and not root.exists():
        spec = job.data.phantoms
        display.phase("generating phantoms", spec.sites * spec.cases)
        write_federation(
            root,
            spec.sites,
            spec.cases,
            job.seed,
            on_case=lambda site, case: display.advance(1, status=f"{site} {case}"),
        )
    folders = site_folders(root, job.data.sites)
    pre = PreprocessConfig(roi=job.task.roi)
    display.phase("preparing cases", len(folders))
    sites = []
    for folder in folders:
        sites.append(
            load_site(
                folder,
                pre,
                test_fraction=job.data.test_fraction,
                seed=job.seed,
                max_cases=job.data.max_cases_per_site,
                on_bad_case=job.data.on_bad_case,
                on_case=lambda site, case: display.status(f"{site} {case}"),
            )
        )
        display.advance(1)
    return sites


def _train_run(
    job: JobConfig,
    run: ModelRun,
    train: Mapping[str, SegData],
    evaluator: SegEvaluator,
    display: ProgressDisplay,
    n_sites: int,
) -> None:
    """Train one model. Pooled training takes batches as large as the whole federation's (batch size x sites),
    so that it sees as many examples per step as all the sites together, for the same number of steps."""
    t0 = time.perf_counter()
    private = run.kind == "federated"  # baselines keep their data where it is: nothing leaves, nothing to protect
    privacy = job.privacy if private else PrivacyConfig()
    tasks = {
        site: BrainTumorTask(job.task, train[site], None, site=site, seed=job.seed, dp_sgd=privacy.dp_sgd)
        for site in run.sites
    }
    batch = job.task.batch_size * (n_sites if run.kind == "pooled" else 1)
    # a baseline trains alone: its update is taken as it is (FedAvg of one), not through a server optimiser
    strategy = make_strategy(
        job.federation.strategy if run.kind == "federated" else "fedavg",
        job.train_config(batch_size=batch),
        trim_fraction=job.federation.trim_fraction,
        server_lr=job.federation.server_lr,
        beta1=job.federation.beta1,
        beta2=job.federation.beta2,
        tau=job.federation.tau,
        mu=job.federation.proximal_mu,
        privacy=privacy,
        seed=job.seed,
    )
    ledgers = {site: site_ledger(privacy, site, None) for site in tasks}
    chains = {site: site_chain(privacy, len(tasks)) for site in tasks}
    every = max(1, job.federation.rounds // 5)
    recorder = _Recorder(run, display, evaluator, every)
    loop = LoopConfig(
        rounds=job.federation.rounds,
        min_sites=min(job.federation.min_sites, len(tasks)),
        secure=SecureSettings() if privacy.secure_aggregation else None,
    )
    result = simulate(
        strategy,
        tasks,
        initial_arrays(job.task, job.seed),
        loop,
        events=recorder,
        chains=chains,
        ledgers=ledgers,
        seed=job.seed,
    )
    run.ledgers = {site: ledger for site, ledger in ledgers.items() if ledger is not None}
    run.arrays = result.arrays
    run.seconds = time.perf_counter() - t0


def plan_runs(job: JobConfig, site_names: Sequence[str]) -> list[ModelRun]:
    runs: list[ModelRun] = []
    if "local" in job.compare:
        runs += [ModelRun(name=f"local:{s}", kind="local", sites=(s,)) for s in site_names]
    if "pooled" in job.compare:
        runs.append(ModelRun(name="pooled", kind="pooled", sites=("pooled",)))
    runs.append(ModelRun(name=job.federation.strategy, kind="federated", sites=tuple(site_names)))
    return runs


def run_job(job: JobConfig, display: ProgressDisplay) -> JobResult:
    """Run the job's federation and its baselines, then evaluate every model on every site."""
    t0 = time.perf_counter()
    sites = prepare_data(job, display)
    t_data = time.perf_counter() - t0
    train = {s.name: SegData.from_cases(s.train) for s in sites}
    tests = {s.name: SegData.from_cases(s.test) for s in sites}
    if "pooled" in job.compare:
        train["pooled"] = SegData.concat([train[s.name] for s in sites])
    evaluator = SegEvaluator(job, tests)
    runs = plan_runs(job, [s.name for s in sites])
    display.phase("training", job.federation.rounds * len(runs))
    for run in runs:
        _train_run(job, run, train, evaluator, display, n_sites=len(sites))
    display.phase("cross-site evaluation", len(runs))
    cross: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        assert run.arrays is not None
        cross[run.name] = evaluator.per_site(run.arrays)
        display.advance(1, status=run.name)
    seconds = {"data": t_data, "total": time.perf_counter() - t0}
    seconds.update({f"train:{run.name}": run.seconds for run in runs})
    return JobResult(job=job, sites=tuple(sites), runs=tuple(runs), cross=cross, seconds=seconds)


def site_task(
    job: JobConfig,
    folder: Path,
    name: str,
    display: ProgressDisplay | None = None,
    privacy: PrivacyConfig | None = None,
) -> BrainTumorTask:
    """One hospital's task in a real deployment: its own cases only, split as in simulation; ``privacy`` is what
    the site runs (the job's, made stricter by its policy)."""
    site = load_site(
        folder,
        PreprocessConfig(roi=job.task.roi),
        test_fraction=job.data.test_fraction,
        seed=job.seed,
        max_cases=job.data.max_cases_per_site,
        on_bad_case=job.data.on_bad_case,
    )
    for problem in site.problems:
        (display.console.print if display else print)(f"skipped case {problem.case_id}: {problem.reason}")
    return BrainTumorTask(
        job.task,
        SegData.from_cases(site.train),
        SegData.from_cases(site.test),
        site=name,
        seed=job.seed,
        dp_sgd=privacy.dp_sgd if privacy is not None else job.privacy.dp_sgd,
    )
