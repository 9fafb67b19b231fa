"""A hospital's side of a real federation: ``confide site --kit KIT --data DIR`` dials out to the server with the
kit's certificate, shows the job to the operator and runs it only if approved, trains on its own data only, and
sends back filtered updates (each logged in ``KIT/audit/releases.jsonl``). The server's side is deploy.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from confide import job_plan
from confide.config import JobConfig, parse_job, with_code
from confide.errors import ConfigError
from confide.privacy.build import site_chain
from confide.privacy.config import PrivacyConfig, load_policy
from confide.privacy.ledger import Ledger
from confide.privacy.secagg import SecAggError
from confide.privacy.secagg_identity import SiteIdentity
from confide.provision import IdentityError, site_identity
from confide.provision_kit import CRL
from confide.records import Arrays
from confide.site.consent import Approval, job_digest
from confide.site.job_view import describe_job
from confide.site.release_log import ReleaseLog
from confide.site.runner import SiteRunner
from confide.tasks.python_config import PythonTaskConfig
from confide.transport.grpc_client import JobDeclined, SiteClient
from confide.transport.grpc_server import read_kit_file
from confide.transport.inmemory import Endpoint
from confide.validation import read_yaml

log = logging.getLogger(__name__)


def read_kit_config(kit: Path, name: str, required: tuple[str, ...]) -> dict[str, Any]:
    path = kit / name
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"kit file {path} cannot be read: {exc}") from None
    if not isinstance(document, dict) or any(key not in document for key in required):
        raise ConfigError(f"kit file {path} must hold the fields {list(required)}")
    return document


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
