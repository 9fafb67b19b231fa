"""A job served across network namespaces (tests/network/netns.py): the server is ``confide server`` in its own
namespace, each site a process in its own (tests/network/site_process.py), and each site dials its own fault proxy
(tests/network/proxy.py) in the root namespace, which forwards to the server's namespace.

    with Netns(SITES) as net:
        outcome = run_job(net, tmp_path, initial=model, sites={"site-1": ["--target", "2,0"], ...}, rounds=3)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from confide import serde
from confide.provision import parse_federation, provision
from confide.records import Arrays
from tests.network.netns import Netns, Process, wait_for
from tests.network.proxy import Faults, FaultyProxy, proxies

PORT = 8443  # the server's port in its own namespace: no other process there to take it


@dataclass
class Running:
    """A job under way, for the test's hands while it runs: the proxies, the namespaces, the report folder."""

    net: Netns
    proxies: dict[str, FaultyProxy]
    report: Path
    server: Process
    sites: dict[str, Process] = field(default_factory=dict)

    def rounds(self) -> list[dict[str, Any]]:
        """rounds.json as it stands (rewritten after every round; empty before the first closes)."""
        path = self.report / "rounds.json"
        try:
            return list(json.loads(path.read_text())) if path.exists() else []
        except ValueError:  # replaced as we read
            return []


@dataclass(frozen=True)
class Outcome:
    """How the job ended: the server's exit code, its final model, rounds.json, each site's last line."""

    server_code: int | None
    final: Arrays | None
    rounds: list[dict[str, Any]]
    answers: dict[str, str]
    logs: str  # the tail of every process's output, for an assertion's message

    @property
    def round_seconds(self) -> list[float]:
        return [float(r["seconds"]) for r in self.rounds]


def write_job(work: Path, initial: Arrays, rounds: int, federation: Mapping[str, object]) -> Path:
    """A job file whose initial model is given (the server builds none and imports no torch): FedAvg at lr 0.5."""
    model = work / "initial.safetensors"
    serde.save_arrays(model, initial)
    job = {
        "name": "netns",
        "data": {"root": str(work)},
        "task": {"lr": 0.5},
        "initial_model": str(model),
        "federation": {"rounds": rounds, "local_steps": 1, **federation},
        "report": {"out": str(work / "report")},
    }
    path = work / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def run_job(
    net: Netns,
    work: Path,
    *,
    initial: Arrays,
    sites: Mapping[str, list[str]],
    rounds: int,
    faults: Faults | None = None,
    federation: Mapping[str, object] | None = None,
    during: Callable[[Running], None] | None = None,
    limit_s: float = 240.0,
) -> Outcome:
    """Provision a federation whose server address is the proxies' (:attr:`Netns.dial_host`), serve ``rounds``
    rounds of a job to ``sites`` (each site's arguments to tests/network/site_process.py), each dialling its own
    proxy with ``faults``; ``during(running)`` runs once every site has started. Waits (at most ``limit_s``) for
    the server to end, then for the sites."""
    work.mkdir(parents=True, exist_ok=True)
    names = list(sites)
    kits = work / "kits"
    provision(
        parse_federation({"name": "netns", "server": {"host": net.dial_host, "port": PORT}, "sites": names}), kits
    )
    job = write_job(work, initial, rounds, {"min_sites": len(names), **(federation or {})})
    serving = ["confide.cli", "server", str(job), "--kit", str(kits / "server"), "--wait", "120"]
    server = net.start(
        net.server_ns,
        [sys.executable, "-m", *serving, "--host", net.server_address, "--port", str(PORT)],
        log=work / "logs" / "server.log",
    )
    wait_for(lambda: "listening on" in server.output() or server.popen.poll() is not None, 60, "the server listening")
    if server.popen.poll() is not None:
        raise RuntimeError(f"the server did not start:\n{server.tail()}")
    with proxies((net.server_address, PORT), names, faults or Faults(), host=net.dial_host) as near:
        running = Running(net, near, work / "report", server)
        for name, args in sites.items():
            dial = ["--kit", str(kits / "sites" / name), "--server", f"{net.dial_host}:{near[name].port}"]
            running.sites[name] = net.start(
                net.site_ns[name],
                [sys.executable, "-m", "tests.network.site_process", *dial, *args],
                log=work / "logs" / f"{name}.log",
            )
        if during is not None:
            during(running)
        processes = [server, *running.sites.values()]
        try:
            wait_for(lambda: server.popen.poll() is not None, limit_s, "the job's end", every_s=0.1)
            wait_for(lambda: all(p.popen.poll() is not None for p in processes), 90, "the sites' end", every_s=0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n" + "\n".join(p.tail() for p in processes)) from None
    final_path = work / "report" / "global.safetensors"
    return Outcome(
        server_code=server.popen.returncode,
        final=serde.decode_arrays(final_path.read_bytes()) if final_path.exists() else None,
        rounds=running.rounds(),
        answers={name: p.last_line() for name, p in running.sites.items()},
        logs="\n".join(p.tail() for p in processes),
    )
