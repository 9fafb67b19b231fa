"""The Ray engine: a simulated federation of many sites on a pool of Ray actors (``simulation.engine: ray``).

The server loop runs in this process, as in the in-process simulator; the sites run in a pool of Ray actors
(:class:`~confide.sim_ray_host.SiteHost`), fewer than the sites, each keeping its share of them for the whole job
and reading their data itself, so this process never holds every site's data. With ``federation.fraction`` below
1 only a sample of the sites trains each round. The transport (:mod:`confide.transport.ray_transport`) carries
serde bytes and yields replies in a fixed order, so a seeded job without privacy ends with the same model as on
the in-process engine (tests/sim/test_ray_engine.py compares them array by array).

Ray runs on this machine only: started here (dashboard off, a small object store, workers' logs kept from this
console) unless the caller started it already, and shut down at the end by whoever started it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from confide import serde
from confide.config import JobConfig
from confide.errors import ConfideError, ConfigError
from confide.records import Arrays
from confide.server.events import Fanout
from confide.server.loop import History, LoopConfig, RoundEvents, ServerLoop
from confide.sim_ray_host import HostReport, HostScores, SiteHost, SiteReport, job_document
from confide.strategies.base import Strategy
from confide.tasks.python_config import PythonTaskConfig
from confide.transport.base import Transport
from confide.transport.ray_transport import RayTransport

if TYPE_CHECKING:
    from confide.dashboard.follow import Watcher

log = logging.getLogger(__name__)

RAY_MISSING = (
    "simulation.engine ray needs Ray, which is not installed here: install Confide's ray extra "
    "(pip install -c constraints.txt -e '.[ray]', or pip install 'confide[ray]')"
)


def require_ray() -> ModuleType:
    """The ``ray`` module, or a ConfigError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


def pool_size(job: JobConfig, sites: int) -> int:
    """The number of actors: ``simulation.actors``, else as many as the machine's cores hold at
    ``cpus_per_actor`` each; never more than the sites."""
    sim = job.simulation
    wanted = sim.actors or max(1, int((os.cpu_count() or 1) // sim.cpus_per_actor))
    return max(1, min(wanted, sites))


@contextlib.contextmanager
def ray_session(cpus: float, object_store_mb: int) -> Iterator[ModuleType]:
    """Ray on this machine, with at least ``cpus`` logical CPUs: started (and shut down after) unless it runs
    already, in which case it is used as it is."""
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(
            address="local",
            num_cpus=max(os.cpu_count() or 1, math.ceil(cpus)),
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=object_store_mb * 1024 * 1024,
            logging_level=logging.WARNING,
        )
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def hosts_job(job: JobConfig) -> JobConfig:
    """The job as the hosts get it: every path absolute (an actor's working folder need not be ours)."""
    update: dict[str, Any] = {"data": job.data.model_copy(update={"root": Path(job.data.root).resolve()})}
    if isinstance(job.task, PythonTaskConfig) and job.task.code is not None:
        update["task"] = job.task.model_copy(update={"code": Path(job.task.code).resolve()})
    if job.initial_model is not None:
        update["initial_model"] = Path(job.initial_model).resolve()
    return job.model_copy(update=update)


@dataclass(frozen=True)
class RayRun:
    """What the federated run left: the final global arrays and the rounds."""

    arrays: Arrays
    history: History


class RayFederation:
    """The job's sites on a pool of actors: ``with RayFederation(job, sites) as federation: federation.run(...)``.
    Entering starts Ray (unless it runs), makes the actors and has each read its sites' data; leaving stops the
    actors (and Ray, if it was started here)."""

    def __init__(self, job: JobConfig, sites: Sequence[str], *, window: int = 2) -> None:
        if not sites:
            raise ConfigError("the Ray engine needs at least one site")
        if len(set(sites)) != len(sites):
            raise ConfigError("the Ray engine's sites must have distinct names")
        self.job = job
        self.names = list(sites)
        self.actors = pool_size(job, len(self.names))
        self.window = window
        # sticky, spread evenly: site i lives on actor i mod the pool for the whole job
        self.placement = {site: i % self.actors for i, site in enumerate(self.names)}
        self._session: contextlib.ExitStack | None = None
        self._ray: ModuleType | None = None
        self.hosts: list[Any] = []

    def __enter__(self) -> RayFederation:
        sim = self.job.simulation
        stack = contextlib.ExitStack()
        try:
            ray = stack.enter_context(ray_session(self.actors * sim.cpus_per_actor, sim.object_store_mb))
            self._session, self._ray = stack, ray
            self._check_resources(ray)
            actor = ray.remote(SiteHost).options(num_cpus=sim.cpus_per_actor, num_gpus=sim.gpus_per_actor)
            document = job_document(hosts_job(self.job))
            self.hosts = [
                actor.remote(document, [s for s, h in self.placement.items() if h == i], len(self.names))
                for i in range(self.actors)
            ]
            self._get([host.load.remote() for host in self.hosts])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        ray, self._ray = self._ray, None
        if ray is not None:
            for host in self.hosts:
                with contextlib.suppress(Exception):  # already gone
                    ray.kill(host)
        self.hosts = []
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def _check_resources(self, ray: ModuleType) -> None:
        """Refuse a pool that could never be placed (its actors would wait for ever); one that fits waits, if need
        be, for what other work holds (an earlier federation's actors are released in the background)."""
        sim = self.job.simulation
        have = ray.cluster_resources()
        wanted = (("CPU", sim.cpus_per_actor, "cpus_per_actor"), ("GPU", sim.gpus_per_actor, "gpus_per_actor"))
        for resource, each, field in wanted:
            need = self.actors * each
            if need > 0 and have.get(resource, 0.0) + 1e-9 < need:
                raise ConfigError(
                    f"simulation.{field} {each:g} for {self.actors} actor(s) needs {need:g} {resource}(s); Ray has "
                    f"{have.get(resource, 0.0):g} here: use fewer actors (simulation.actors) or less per actor"
                )

    def _live(self) -> ModuleType:
        if self._ray is None:
            raise ConfideError("the Ray federation is not started (use it in a with block)")
        return self._ray

    def _get(self, calls: list[Any]) -> list[Any]:
        """The calls' results; an error raised in an actor is raised here as itself where it is Confide's."""
        ray = self._live()
        try:
            return list(ray.get(calls))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, ConfideError):
                raise cause from None
            raise ConfideError(f"a Ray actor failed: {type(cause).__name__}: {cause}") from None
        except ray.exceptions.RayActorError as exc:
            lines = str(exc).strip().splitlines()
            raise ConfideError(f"a Ray actor stopped: {lines[0] if lines else type(exc).__name__}") from None

    def transport(self) -> RayTransport:
        self._live()
        return RayTransport(self.hosts, self.placement, window=self.window)

    def run(
        self,
        strategy: Strategy,
        initial: Arrays,
        config: LoopConfig,
        events: RoundEvents | None = None,
        watch: Watcher | None = None,
    ) -> RayRun:
        """The federated run: the server loop here, the sites in the actors. ``watch`` (the live dashboard) follows
        it; the sites' ledgers live in their actors, so it shows the epsilon their updates report."""
        if config.secure is not None:
            raise ConfigError("the Ray engine does not run secure aggregation: use simulation.engine inprocess")
        transport: Transport = self.transport()
        if watch is not None:
            followed = watch.follow(transport)
            transport, events = followed.transport, Fanout(events, followed.events)
        loop = ServerLoop(strategy, transport, initial, config, events)
        try:
            history = loop.run()
        finally:
            transport.close()  # a watching dashboard hears that the run is over, however it ended
        return RayRun(arrays=loop.global_arrays, history=history)

    def scores(self, arrays: Arrays, *, personal: bool = True) -> dict[str, dict[str, float]]:
        """Every metric of ``arrays`` at every site, on its own test split (with its size: ``cases``), in the order
        of the sites: with ``personal``, the federated model as each site uses it; else the model as it is."""
        ray = self._live()
        model = ray.put(serde.encode_arrays(arrays))
        found: dict[str, dict[str, float]] = {}
        for text in self._get([host.scores.remote(model, personal) for host in self.hosts]):
            found.update(HostScores.model_validate_json(text).scores)
        return {site: found[site] for site in self.names}

    def local_models(self, start: Arrays) -> dict[str, tuple[Arrays, list[float]]]:
        """Each site trained alone from ``start`` in its actor (the local-only baseline): its model and its
        training loss per round, in the order of the sites."""
        ray = self._live()
        payload = ray.put(serde.encode_arrays(start))
        found: dict[str, tuple[Arrays, list[float]]] = {}
        for part in self._get([host.local_models.remote(payload) for host in self.hosts]):
            for site, model, losses in part:
                found[str(site)] = (serde.decode_arrays(model), [float(x) for x in json.loads(losses)])
        return {site: found[site] for site in self.names}

    def finetuned(self, final: Arrays) -> dict[str, tuple[Arrays, float]]:
        """Each site's adaptation of the federated model ``final`` to its own training split, made in its actor:
        the adapted model and its training loss, in the order of the sites."""
        ray = self._live()
        payload = ray.put(serde.encode_arrays(final))
        found: dict[str, tuple[Arrays, float]] = {}
        for part in self._get([host.finetuned.remote(payload) for host in self.hosts]):
            for site, model, loss in part:
                found[str(site)] = (serde.decode_arrays(model), float(loss))
        return {site: found[site] for site in self.names}

    def reports(self) -> list[SiteReport]:
        """Each site's sizes, skipped inputs, notes and ledger, in the order of the sites."""
        found: dict[str, SiteReport] = {}
        for text in self._get([host.report.remote() for host in self.hosts]):
            found.update((r.name, r) for r in HostReport.model_validate_json(text).sites)
        return [found[site] for site in self.names]
