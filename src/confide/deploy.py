"""Running a job as a real federation: the server process and the site processes, from their kits.

``confide server --kit KIT JOB.yaml`` serves the job to sites that dial in with certificates from the same
federation; ``confide site --kit KIT --data DIR`` runs one hospital's side, reading only its own data folder.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from confide import job_plan, serde
from confide.config import JobConfig
from confide.deploy_site import read_kit_config
from confide.errors import ConfigError, RoundFailed
from confide.provision_kit import CRL, load_revoked, load_roster
from confide.records import Arrays
from confide.report.tracking import open_tracking
from confide.sanitize import one_line
from confide.server import checkpoint
from confide.server.events import Fanout
from confide.server.loop import History, RoundEvents, RoundResult, ServerLoop
from confide.server.observed import ReplyListener, observe
from confide.server.secure_round import SecureSettings
from confide.server.trail import server_trail
from confide.strategies import Strategy
from confide.transport.grpc_server import (
    HEADER_ALLOWANCE,
    FederationService,
    ServiceConfig,
    read_kit_file,
)
from confide.transport.grpc_serving import start_server

if TYPE_CHECKING:
    from confide.dashboard.follow import Watcher
    from confide.transport.base import Transport

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Watched(Generic[T]):
    """A kit file the server re-reads when it changes (the revocation list, the roster): looked at once a second
    at most (every call of every site asks), so a change takes effect within a second."""

    def __init__(self, path: Path, load: Callable[[Path], T], missing: T, every_s: float = 1.0) -> None:
        self.path = path
        self.load = load
        self.every_s = every_s
        self._mtime = -1.0
        self._value = missing
        self._looked = -float("inf")

    def __call__(self) -> T:
        now = time.monotonic()
        if now - self._looked < self.every_s:
            return self._value
        self._looked = now
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return self._value
        if mtime != self._mtime:
            self._value = self.load(self.path)
            self._mtime = mtime
        return self._value


def _roster(kit: Path, cfg: dict[str, Any]) -> Callable[[], dict[str, int] | None]:
    if "roster" not in cfg:
        log.warning(
            "kit %s has no site roster (provisioned by an older Confide): any site the CA signed is let in", kit
        )
        return lambda: None
    path = kit / str(cfg["roster"])
    if not path.exists():
        raise ConfigError(f"kit file {path} is missing: copy server/roster.json from the provisioning folder")
    roster = _Watched[dict[str, int] | None](path, load_roster, None)
    roster()  # a malformed roster stops the server at start, not at the first site's call
    return roster


def serve(
    kit: Path,
    job: JobConfig,
    *,
    initial: Callable[[JobConfig], Any],
    resume: bool = False,
    port: int | None = None,
    host: str | None = None,
    wait_s: float = 300.0,
    events: RoundEvents | None = None,
    on_listen: Callable[[int], None] | None = None,
    dashboard: Watcher | None = None,
) -> Path:
    """Serve ``job`` to the federation's sites; return the path of the final global model. The server listens on
    ``host`` (default: the address in its kit, the one sites dial; ``0.0.0.0`` for every interface). ``dashboard``
    (the live dashboard) follows the federation from the moment the server listens."""
    cfg = read_kit_config(kit, "server.yaml", ("federation", "port", "certificate", "private_key", "ca"))
    ckpt_dir = job.report.out / "checkpoints"
    found = checkpoint.load_latest(ckpt_dir)
    if found is not None and not resume:
        raise ConfigError(
            f"{ckpt_dir} holds a checkpoint of round {found.round}: pass --resume to continue it, "
            "or choose another report.out"
        )
    # report.tensorboard / report.mlflow: opened before the server listens (a missing extra stops it there)
    with server_trail(job.report.out), open_tracking(job, where="deployment", resume=found is not None) as tracking:
        log.info("server for job %r starting (%s)", job.name, "resuming" if found is not None else "new run")
        tracked = tracking.rounds(job.federation.strategy)  # also hears each answer: the epsilon sites report
        events = Fanout(events, tracked)
        try:
            final = _serve(
                kit,
                cfg,
                job,
                initial=initial,
                port=port,
                host=host,
                wait_s=wait_s,
                events=events,
                on_listen=on_listen,
                dashboard=dashboard,
                replies=tracked,
            )
        except BaseException as exc:
            log.error("the job ended in failure: %s", one_line(f"{type(exc).__name__}: {exc}", 500))
            raise
        tracking.attach(job.report.out / "rounds.json")
        return final


def _serve(
    kit: Path,
    cfg: dict[str, Any],
    job: JobConfig,
    *,
    initial: Callable[[JobConfig], Any],
    port: int | None,
    host: str | None,
    wait_s: float,
    events: RoundEvents | None,
    on_listen: Callable[[int], None] | None,
    dashboard: Watcher | None = None,
    replies: ReplyListener | None = None,
) -> Path:
    ckpt_dir = job.report.out / "checkpoints"
    ca = read_kit_file(kit, cfg["ca"])
    roster = _roster(kit, cfg)
    sites = len(roster() or {}) or job.federation.min_sites
    service = FederationService(
        ca,
        ServiceConfig(
            job=json.loads(job.model_dump_json()),
            site_timeout_s=job.federation.site_timeout_s,
            heartbeat_s=min(5.0, job.federation.site_timeout_s / 3),
            revoked=_Watched[frozenset[int]](
                kit / str(cfg.get("revocation_list", "revoked.json")), load_revoked, frozenset()
            ),
            roster=roster,
            max_transfers=max(1024, 4 * sites),  # each site's long poll holds one transfer; a push may be open too
            max_bytes=HEADER_ALLOWANCE,  # no upload is due before the first instruction: none larger until then
        ),
    )
    transport: Transport = service if replies is None else observe(service, replies)
    if dashboard is not None:  # sees joins, heartbeats and refusals (the service), rounds and every update's record
        followed = dashboard.follow(transport, service)  # one more listener: each answer is still read once
        transport, events = followed.transport, Fanout(events, followed.events)
    listen = str(host or cfg.get("host") or "127.0.0.1")
    server, bound = start_server(
        service,
        host=listen,
        port=int(cfg["port"] if port is None else port),
        key_pem=read_kit_file(kit, cfg["private_key"]),
        cert_pem=read_kit_file(kit, cfg["certificate"]),
    )
    log.info("listening on %s:%d", listen, bound)
    if on_listen is not None:
        on_listen(bound)
    try:
        # the model is built (torch imported, for most jobs) while the sites dial in, not before the server listens
        model = initial(job)
        # a site's upload may be at most twice the model's size (sparse indices, secure aggregation's uint32 words)
        service.limit_transfers(serde.encode_arrays_parts(model).size)
        need = job.federation.min_sites
        start = max(need, job.federation.start_sites or need)
        present = service.wait_for_sites(start, wait_s)
        if len(present) < start:
            raise RoundFailed(
                f"only {len(present)} of the {start} sites needed joined within {wait_s:.0f} s: {present}"
            )
        rounds_file = _RoundsFile(job.report.out / "rounds.json", events)
        loop = ServerLoop(
            _strategy(job, roster_size=len(service.config.roster() or {}) or len(present)),
            transport,
            model,
            job_plan.loop_settings(
                job,
                sites=len(present),
                secure=_secure_settings(kit, cfg) if job.privacy.secure_aggregation else None,
                deployed=True,
                checkpoint_dir=ckpt_dir,
            ),
            rounds_file,
        )
        del model  # the loop holds the model now: once round 1 replaces it, nothing keeps this copy alive
        rounds_file.history = loop.history
        history = loop.run()
        job.report.out.mkdir(parents=True, exist_ok=True)
        final = job.report.out / "global.safetensors"
        serde.save_arrays(final, loop.global_arrays)
        # every site leaves with the final model, unless the job keeps it at the server
        service.close(final=serde.encode_arrays_parts(loop.global_arrays) if job.federation.send_final_model else None)
        rounds_file.write(history)
        log.info("job done after round %d: final model %s", history.rounds[-1].round if history.rounds else 0, final)
        return final
    except BaseException as exc:  # the sites hear that the job failed, not that it is done
        service.close(failed=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        raise
    finally:
        service.close()
        # every live site hears "done" and gets the final model; one still training on a round that closed without
        # it (its answer late) finishes that step first, so the wait covers a round's deadline
        farewell_s = max(60.0, min(job.federation.round_deadline_s or 0.0, 600.0))
        left = service.wait_for_farewells(timeout_s=farewell_s)
        if left:
            log.warning("sites %s were not told the job is done (still busy after %.0f s)", left, farewell_s)
        # stop taking calls, but let the streams in flight (the final model on its way to a site) finish first
        server.stop(grace=15.0).wait(timeout=20.0)


class _RoundsFile:
    """Round events that rewrite ``rounds.json`` after every round (an auditor reads a running job's trail, and a
    crash loses nothing of it), then pass the event on."""

    def __init__(self, path: Path, inner: RoundEvents | None) -> None:
        self.path = path
        self.inner = inner
        self.history: History | None = None

    def round_started(self, round: int, sites: list[str]) -> None:
        if self.inner is not None:
            self.inner.round_started(round, sites)

    def site_finished(self, round: int, site: str, ok: bool, detail: str) -> None:
        if self.inner is not None:
            self.inner.site_finished(round, site, ok, detail)

    def round_finished(self, result: RoundResult, global_arrays: Arrays) -> None:
        if self.history is not None:
            self.write(self.history)
        if self.inner is not None:
            self.inner.round_finished(result, global_arrays)

    def write(self, history: History) -> None:
        rounds = [{**r.to_dict(), "coordination_seconds": r.coordination_seconds} for r in history.rounds]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(rounds, indent=1))
        os.replace(tmp, self.path)


def _secure_settings(kit: Path, cfg: dict[str, Any]) -> SecureSettings:
    """Secure rounds that send the federation's revocation list (the kit's ``crl.pem``) with every roster."""
    name = str(cfg.get("crl", CRL))
    if not (kit / name).is_file():
        log.warning("kit %s has no revocation list %s: sites accept a roster only with one in their own kit", kit, name)
        return SecureSettings()
    return SecureSettings(revocation_list=read_kit_file(kit, name))


def _strategy(job: JobConfig, *, roster_size: int) -> Strategy:
    """The job's strategy on the server. SCAFFOLD's N is the number of sites on the roster (every site that may
    take part); FedBN learns the normalisation layers to leave at the sites from the task's model."""

    def norm_names() -> frozenset[str]:
        from confide.workloads.registry import make_workload

        return make_workload(job.task).norm_names()

    return job_plan.build_strategy(
        job, sites=max(roster_size, 1), batch=int(job.task.batch_size), norm_names=norm_names
    )
