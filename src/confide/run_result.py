"""What a simulated job produces, shared by both engines (:mod:`confide.experiment` in-process,
:mod:`confide.experiment_ray` on Ray) and read by the report: each model's run (:class:`ModelRun`), the job's
result (:class:`JobResult`), the scoring of a model on every site's test split (:class:`Evaluator`,
:func:`with_summary`) and the round listener that draws a run's learning curve (:class:`Recorder`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from confide.config import JobConfig
from confide.privacy.ledger import Ledger
from confide.records import Arrays
from confide.report.progress import ProgressDisplay
from confide.server.loop import RoundResult
from confide.strategies.controls import model_part
from confide.workloads.base import SiteSplit, Workload


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


def curve_every(job: JobConfig) -> int:
    """The learning curve scores the model on every site's test split every this many rounds."""
    return max(1, job.federation.rounds // 5)
