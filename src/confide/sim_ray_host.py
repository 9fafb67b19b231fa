"""What runs inside each actor of the Ray engine (:mod:`confide.sim_ray`): a host for many simulated sites.

A host is given the job (as JSON) and the names of its sites, which stay with it for the whole job (a site's
SCAFFOLD memory, FedBN layers and privacy ledger live in its runner, here). It reads its sites' data in its own
process (:meth:`SiteHost.load`, at the start, so that the driver never holds every site's data and a data error
stops the job before round 1), builds each site's task and runner the first time the site is asked to train, and
answers with serde bytes, exactly as a site of the in-process simulator does: each site's privacy is the job's
(:func:`~confide.job_plan.simulated_privacy`), its task built by the workload as in-process.

Everything that crosses to the driver is bytes (serde) or JSON validated by :class:`SiteReport`: no object of
Confide's is pickled. The class itself is plain Python; :mod:`confide.sim_ray` makes it a Ray actor.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from confide import serde
from confide.config import JobConfig, parse_job
from confide.errors import ConfideError
from confide.job_plan import simulated_privacy
from confide.privacy.build import site_chain, site_ledger
from confide.records import Arrays
from confide.site.runner import SiteRunner
from confide.strategies.controls import model_part
from confide.workloads.base import SiteSplit, SiteTask, Workload
from confide.workloads.registry import make_workload

log = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteReport(_Strict):
    """One site as its host reports it at the end of a job: its data's sizes and notes, its ledger."""

    name: str
    train: int
    test: int
    skipped: list[tuple[str, str]] = []
    notes: list[str] = []
    ledger: dict[str, Any] | None = None  # Ledger.document(), where the site keeps one


class HostReport(_Strict):
    sites: list[SiteReport]


class HostScores(_Strict):
    """Every metric of a model at each of a host's sites, on the site's own test split (and its size: ``cases``)."""

    scores: dict[str, dict[str, float]]


def job_document(job: JobConfig) -> str:
    """The job as the hosts receive it: JSON, read back by :func:`parse_job` (validated again there)."""
    return job.model_dump_json()


class SiteHost:
    """Many sites of one simulated federation, in one process."""

    def __init__(self, job: str, sites: list[str], total_sites: int) -> None:
        """``job``: :func:`job_document`; ``sites``: the sites this host keeps; ``total_sites``: the federation's
        size (a simulated site's privacy policy counts the job's quorum among them)."""
        if not sites:
            raise ConfideError("a site host needs at least one site")
        self.job = parse_job(json.loads(job), source="the Ray engine's job")
        self.names = list(sites)
        self.privacy = simulated_privacy(self.job, total_sites)
        self.workload: Workload = make_workload(self.job.task)
        self.splits: dict[str, SiteSplit] = {}
        self.runners: dict[str, SiteRunner] = {}
        self.tasks: dict[str, SiteTask] = {}
        self._evaluator: SiteTask | None = None

    def load(self) -> int:
        """Read every site's data (the task's fields completed from the data first, as in-process); returns how
        many sites were read. Called once, before round 1."""
        if not self.splits:
            data = self.job.data.model_copy(update={"sites": self.names})
            splits = self.workload.load_sites(data, self.job.seed, lambda line: None)
            self.splits = {split.name: split for split in splits}
        return len(self.splits)

    def runner(self, site: str) -> SiteRunner:
        """The site's runner, built the first time it is needed (its task holds a model and what the site keeps
        between rounds)."""
        found = self.runners.get(site)
        if found is not None:
            return found
        split = self.load_split(site)
        # as in-process: a site holds its test split only for federated evaluation (federation.evaluate_every)
        test = split.test if self.job.federation.evaluate_every else None
        task = self.workload.task(split.train, test, site=site, seed=self.job.seed, dp_sgd=self.privacy.dp_sgd)
        runner = SiteRunner(
            site,
            task,
            chain=site_chain(self.privacy),
            ledger=site_ledger(self.privacy, site, None),
            job=self.job.name,
        )
        self.tasks[site] = task
        self.runners[site] = runner
        return runner

    def load_split(self, site: str) -> SiteSplit:
        if site not in self.names:
            raise ConfideError(f"site {site!r} is not kept by this host (it keeps {len(self.names)} others)")
        self.load()
        return self.splits[site]

    def handle(self, site: str, payload: bytes) -> tuple[bytes, float]:
        """The site's encoded answer to ``payload`` and the seconds it took (the site's own time, as the in-memory
        transport measures it)."""
        runner = self.runner(site)
        t0 = time.perf_counter()
        answer = runner.handle(payload)
        return answer, time.perf_counter() - t0

    def notice(self, site: str, message: str) -> None:
        runner = self.runners.get(site)
        if runner is not None:
            runner.notice(message)
        else:
            log.warning("site %s: the server says: %s", site, message)

    def scores(self, model: bytes, personal: bool = True) -> str:
        """:class:`HostScores` (JSON) of ``model`` (serde arrays) at every site of this host, on its own test split,
        scored by one evaluator task as the in-process engine's Evaluator does: with ``personal``, the federated
        model as the site uses it (its own FedBN layers where it trained; controls removed), else as it is (a
        local-only or fine-tuned model)."""
        arrays = serde.decode_arrays(model)
        out: dict[str, dict[str, float]] = {}
        for site in self.names:
            split = self.load_split(site)
            task = self.tasks.get(site) if personal else None
            used: Arrays = task.personal(arrays) if task is not None else model_part(arrays)
            metrics = self.evaluator().score(model_part(used), split.test)
            out[site] = {**metrics, "cases": float(self.workload.size(split.test))}
        return HostScores(scores=out).model_dump_json()

    def local_models(self, start: bytes) -> list[tuple[str, bytes, str]]:
        """Each of this host's sites trained alone from ``start`` (serde arrays) for the job's rounds and local
        steps, without privacy (nothing leaves: the in-process engine's local-only baseline, built the same way):
        (site, its model as serde arrays, its training loss per round as JSON), in the order of the sites."""
        from confide import job_plan
        from confide.sim import simulate

        initial = serde.decode_arrays(start)
        out = []
        for site in self.names:
            split = self.load_split(site)
            task = self.workload.task(split.train, None, site=site, seed=self.job.seed, dp_sgd=None)
            strategy = job_plan.build_strategy(
                self.job, kind="local", sites=1, batch=self.workload.batch_size(), norm_names=self.workload.norm_names
            )
            loop = job_plan.loop_settings(self.job, sites=1, secure=None, deployed=False)
            done = simulate(strategy, {site: task}, initial, loop, job=self.job.name)
            losses = [r.train_metrics.get("loss", float("nan")) for r in done.history.rounds]
            out.append((site, serde.encode_arrays(model_part(done.arrays)), json.dumps(losses)))
        return out

    def finetuned(self, final: bytes) -> list[tuple[str, bytes, float]]:
        """Each of this host's sites adapting the federated model ``final`` (serde arrays), as it uses it, to its
        own training split, as the in-process engine's fine-tuning does: (site, the adapted model, its loss)."""
        from confide.finetune import adapt, finetune_config

        arrays = serde.decode_arrays(final)
        config = finetune_config(self.job, self.workload)
        out = []
        for site in self.names:
            split = self.load_split(site)
            own = self.tasks.get(site)
            start = own.personal(arrays) if own is not None else model_part(arrays)
            task = self.workload.task(split.train, None, site=site, seed=self.job.seed + 1, dp_sgd=None)
            tuned, loss = adapt(task, start, config)
            out.append((site, serde.encode_arrays(tuned), loss))
        return out

    def evaluator(self) -> SiteTask:
        if self._evaluator is None:
            first = self.load_split(self.names[0])
            self._evaluator = self.workload.task(
                first.train, first.test, site="evaluator", seed=self.job.seed, dp_sgd=None
            )
        return self._evaluator

    def report(self) -> str:
        """:class:`HostReport` (JSON): every site's sizes, skipped inputs and notes, and its ledger."""
        sites = []
        for site in self.names:
            split = self.load_split(site)
            runner = self.runners.get(site)
            # a site never sampled keeps an empty ledger, as in-process
            ledger = runner.ledger if runner is not None else site_ledger(self.privacy, site, None)
            sites.append(
                SiteReport(
                    name=site,
                    train=self.workload.size(split.train),
                    test=self.workload.size(split.test),
                    skipped=[(p.item, p.reason) for p in split.skipped],
                    notes=list(split.notes),
                    ledger=ledger.document() if ledger is not None else None,
                )
            )
        return HostReport(sites=sites).model_dump_json()
