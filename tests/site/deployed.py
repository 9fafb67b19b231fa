"""A small deployment for the site operator's tests: a provisioned federation, its server and sites over gRPC with
mutual TLS on 127.0.0.1, each in a thread of this process, and the quadratic task of tests/helpers.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confide.config import JobConfig, parse_job
from confide.deploy_site import run_site
from confide.provision import parse_federation, provision
from confide.site.consent import Approval
from confide.site.runner import SiteRunner
from tests.helpers import QuadraticTask, arrays, serve_in_thread

TARGETS = {"site-1": arrays(w=[2.0, 0.0]), "site-2": arrays(w=[0.0, 2.0]), "site-3": arrays(w=[1.0, 4.0])}
SITES = list(TARGETS)


def federation(out: Path) -> Path:
    provision(parse_federation({"name": "fed", "server": {"host": "127.0.0.1", "port": 8443}, "sites": SITES}), out)
    return out


def job(tmp_path: Path, *, rounds: int = 1, min_sites: int = 2, **document: Any) -> JobConfig:
    """A job every one of the three sites joins before round 1; ``document``: more fields of the job file."""
    return parse_job(
        {
            "name": "consent-test",
            "data": {"root": str(tmp_path)},
            "task": {"lr": 0.5},
            "federation": {"rounds": rounds, "local_steps": 1, "min_sites": min_sites, "start_sites": 3},
            "report": {"out": str(tmp_path / "report")},
            **document,
        }
    )


def quadratic(name: str, _job: JobConfig) -> SiteRunner:
    return SiteRunner(name, QuadraticTask(TARGETS[name], examples=10))


@dataclass
class Site:
    """One site's thread, what it said to its operator and how it ended (a count of answers, or an error)."""

    thread: threading.Thread
    said: list[str] = field(default_factory=list)
    outcome: list[object] = field(default_factory=list)
    built: list[str] = field(default_factory=list)  # the jobs it built a runner (read its data) for


def run(
    kits: Path,
    served: JobConfig,
    *,
    approvals: dict[str, Approval | None],
    runner: Callable[[str, JobConfig], SiteRunner] = quadratic,
) -> tuple[dict[str, object], dict[str, Site]]:
    """Serve ``served`` to the three sites until it ends; the server's result and each site's account."""
    thread, result = serve_in_thread(kits / "server", served, wait_s=60, listen_s=30)
    sites = {name: _site(kits, name, int(str(result.get("port", 0))), approvals.get(name), runner) for name in SITES}
    thread.join(120)
    for site in sites.values():
        site.thread.join(60)
    assert not thread.is_alive() and not any(s.thread.is_alive() for s in sites.values()), "the job did not end"
    return result, sites


def _site(
    kits: Path, name: str, port: int, approval: Approval | None, runner: Callable[[str, JobConfig], SiteRunner]
) -> Site:
    def build(site: str, job: JobConfig) -> SiteRunner:
        record.built.append(job.name)
        return runner(site, job)

    def target() -> None:
        try:
            record.outcome.append(
                run_site(
                    kits / "sites" / name,
                    build,
                    address=f"localhost:{port}",
                    give_up_after_s=30,
                    approval=approval,
                    say=record.said.append,
                )
            )
        except Exception as exc:  # reported to the test
            record.outcome.append(exc)

    record = Site(threading.Thread(target=target, daemon=True))
    record.thread.start()
    return record


def rounds(tmp_path: Path) -> list[dict[str, Any]]:
    return list(json.loads((tmp_path / "report" / "rounds.json").read_text()))
