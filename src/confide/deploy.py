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

import yaml

from confide import job_plan, serde
from confide.config import JobConfig, parse_job, with_code
from confide.errors import ConfigError, RoundFailed
from confide.privacy.build import site_chain
from confide.privacy.config import PrivacyConfig, load_policy
from confide.privacy.ledger import Ledger
from confide.privacy.secagg import SecAggError
from confide.privacy.secagg_identity import SiteIdentity
from confide.provision import IdentityError, site_identity
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
from confide.site.consent import Approval, job_digest
from confide.site.job_view import describe_job
from confide.site.release_log import ReleaseLog
from confide.site.runner import SiteRunner
from confide.strategies import Strategy
from confide.tasks.python_config import PythonTaskConfig
from confide.transport.grpc_client import JobDeclined, SiteClient
from confide.transport.grpc_server import (
    HEADER_ALLOWANCE,
    FederationService,
    ServiceConfig,
    read_kit_file,
)
from confide.transport.grpc_serving import start_server
from confide.transport.inmemory import Endpoint
from confide.validation import read_yaml

if TYPE_CHECKING:
    from confide.dashboard.follow import Watcher
    from confide.transport.base import Transport

log = logging.getLogger(__name__)
T = TypeVar("T")


def read_kit_config(kit: Path, name: str, required: tuple[str, ...]) -> dict[str, Any]:
    path = kit / name
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"kit file {path} cannot be read: {exc}") from None
    if not isinstance(document, dict) or any(key not in document for key in required):
        raise ConfigError(f"kit file {path} must hold the fields {list(required)}")
    return document


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
    with server_trail(job.report.out), open_tracking(job, where="deployment") as tracking:
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


def site_code(job: JobConfig, code: Path | None) -> JobConfig:
    """The job as this site runs it: a task named by entry point is imported from the site's own ``code`` folder,
    and only the entry that folder's own ``job.yaml`` names. The server never sends code, nor chooses where code
    comes from or which of the folder's modules runs: a job naming another entry is refused."""
    if not isinstance(job.task, PythonTaskConfig):
        return job
    if code is None:
        raise ConfigError(
            f"job {job.name!r} runs the task {job.task.entry!r} from its own code: give this site's copy of that "
            "code with --code FOLDER"
        )
    pinned = Path(code) / "job.yaml"
    if not pinned.is_file():
        raise ConfigError(
            f"--code {code} has no job.yaml: the site runs only the entry its own copy of the job names "
            f"(task.entry {job.task.entry!r} for this job)"
        )
    own = read_yaml(pinned, "job")
    own_task = own.get("task") if isinstance(own, dict) else None
    own_entry = own_task.get("entry") if isinstance(own_task, dict) else None
    if own_entry != job.task.entry:
        raise ConfigError(
            f"the server's job {job.name!r} names the task entry {job.task.entry!r}, but this site's own copy "
            f"{pinned} names {own_entry!r}: the site runs only the entry its operator's copy names"
        )
    return with_code(job, code)


def site_privacy(kit: Path, job: JobConfig) -> PrivacyConfig:
    """What a site runs: the job's privacy, never weaker than the policy in its kit."""
    return job_plan.deployed_privacy(job, load_policy(kit))


def private_runner(kit: Path, name: str, job: JobConfig, task: Any) -> SiteRunner:
    """A site's runner with its privacy: the job's filters, never weaker than the policy in its kit, and the kit's
    one ledger ``KIT/ledger.json`` (kept across restarts and across jobs, so the budget holds whatever the jobs are
    called).

    Distributed noise is sized for the policy's ``min_contributors`` (a site without one adds the full noise
    itself), never for a number in the job the server sends. A site whose privacy asks for secure aggregation
    (the job or its policy) sends no update in the clear."""
    privacy = site_privacy(kit, job)
    chain = site_chain(privacy)
    ledger = None
    if privacy.spends or privacy.budget is not None:
        delta = privacy.budget.delta if privacy.budget else 1e-5
        budget = privacy.budget.epsilon if privacy.budget else None
        ledger = Ledger.open_kit(name, kit, delta=delta, budget=budget)
    # Secure aggregation signs with the kit's identity and accepts only rosters of at least the sites the noise
    # is sized for. A kit without site.yaml (no identity) refuses every secure aggregation.
    return SiteRunner(
        name,
        task,
        chain=chain,
        ledger=ledger,
        secure_aggregation=privacy.secure_aggregation,
        job=job.name,
        private=privacy.spends,
        identity=kit_identity(kit) if (kit / "site.yaml").is_file() else None,
        min_roster=privacy.min_contributors or 1,
    )


def kit_identity(kit: Path) -> SiteIdentity:
    """The site's identity from its kit: its private key and certificate (which must be a site certificate of the
    kit's CA naming the kit's site), the federation CA and the kit's revocation list (``crl.pem``) if any."""
    cfg = read_kit_config(kit, "site.yaml", ("site", "certificate", "private_key", "ca"))
    name = str(cfg["site"])
    cert, ca = read_kit_file(kit, cfg["certificate"]), read_kit_file(kit, cfg["ca"])
    crl = kit / str(cfg.get("revocation_list", CRL))
    try:
        named = site_identity(cert, ca)
        identity = SiteIdentity.from_pem(
            name, read_kit_file(kit, cfg["private_key"]), cert, ca, crl.read_bytes() if crl.is_file() else b""
        )
    except (IdentityError, SecAggError) as exc:
        raise ConfigError(f"kit {kit} does not hold a usable site identity: {exc}") from None
    if named != name:
        raise ConfigError(f"kit {kit} is for site {name!r} but its certificate names site {named!r}")
    return identity


def run_site(
    kit: Path,
    make_runner: Callable[[str, JobConfig], Endpoint],
    *,
    address: str | None = None,
    give_up_after_s: float = 600.0,
    on_final: Callable[[JobConfig, Arrays], None] | None = None,
    approval: Approval | None = None,
    say: Callable[[str], None] = log.info,
) -> int:
    """Run this site's side until the server says the job is done; return the instructions answered.

    ``address`` overrides the server address of the kit (host:port). ``on_final`` receives the job and its final
    model, which the server sends with "done" (for the site to keep it and adapt it to its own patients).
    ``approval``: the operator's consent (site/consent.py): the job is shown through ``say`` and runs only if
    approved, else the site declines it (JobDeclined) before reading any data; ``None``: the calling program has
    consented. Every answer a SiteRunner gives is logged in ``KIT/audit/releases.jsonl`` and told to ``say``."""
    cfg = read_kit_config(kit, "site.yaml", ("site", "server", "certificate", "private_key", "ca"))
    jobs: list[JobConfig] = []

    def endpoint(job_document: dict[str, Any]) -> Endpoint:
        job = parse_job(job_document, source="job sent by the server")
        if approval is not None:  # shown and approved before the site reads any data
            policy = kit / "privacy.yaml"
            shown = describe_job(job, site_privacy(kit, job), policy if policy.is_file() else None)
            consent = approval.ask(job_document, shown, say)
            if not consent.approved:
                raise JobDeclined(consent.refusal)
        jobs.append(job)
        runner = make_runner(str(cfg["site"]), job)
        if isinstance(runner, SiteRunner) and runner.releases is None:  # what leaves, for the site's auditor
            digest = job_digest(job_document)
            runner.releases = ReleaseLog.in_kit(kit, site=str(cfg["site"]), job=job.name, digest=digest, say=say)
        return runner

    client = SiteClient(
        address or str(cfg["server"]),
        give_up_after_s=give_up_after_s,
        key_pem=read_kit_file(kit, cfg["private_key"]),
        cert_pem=read_kit_file(kit, cfg["certificate"]),
        ca_pem=read_kit_file(kit, cfg["ca"]),
        make_endpoint=endpoint,
    )
    answered = client.run()
    if on_final is not None and client.final is not None and jobs:
        on_final(jobs[-1], client.final)
    return answered
