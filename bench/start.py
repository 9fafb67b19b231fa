"""Start to first round: a deployment launched as an operator launches it, timed until its first round begins.

The server (``confide server``) and N sites (``confide site``, each with its own copy of the ``confide new`` study and
its own data) are started at the same moment as separate processes on this machine, over gRPC with mutual TLS on
loopback. Measured from the launch, as the server's trail (``server.log``) stamps them: when the server listens,
when the last site has joined, and when round 1 begins (its instructions go out). Every process imports what it
needs at once, sharing this machine's cores, as they would on a small hospital server. Two ways to start: the
server builds the initial model from the task (importing torch), or the job gives it (``initial_model``, written
by ``confide init``) and the server imports no torch.

    .venv/bin/python bench/start.py [--sites 4] [--runs 3] [--modes built file]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from confide.config import load_job
from confide.new_task import new_task
from confide.provision import parse_federation, provision
from confide.serde_container import save_arrays
from confide.workloads.registry import make_workload

CLI = [sys.executable, "-m", "confide.cli"]
MARKS = {"listening": "listening on ", "joined": " joined from ", "round 1": "round 1 of "}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare(root: Path, sites: int, initial_file: bool) -> list[str]:
    """Kits, the server's copy of the study (a one-round job, its initial model in a file when ``initial_file``),
    and each site's own copy with its data."""
    names = [f"hospital-{i + 1}" for i in range(sites)]
    provision(parse_federation({"name": "start", "server": {"host": "localhost", "port": 8443}, "sites": names}), root)
    study = root / "server-study"
    new_task(study)
    job = yaml.safe_load((study / "job.yaml").read_text())
    job["federation"].update({"rounds": 1, "local_steps": 1, "min_sites": sites})
    job.update({"compare": [], "finetune": {"steps": 0}, "report": {"out": str(root / "report")}})
    (study / "job.yaml").write_text(yaml.safe_dump(job))
    if initial_file:  # as `confide init` writes it
        made = load_job(study / "job.yaml")
        save_arrays(study / "initial.safetensors", make_workload(made.task).initial(made.seed))
        job["initial_model"] = "initial.safetensors"
        (study / "job.yaml").write_text(yaml.safe_dump(job))
    generated = sorted(p for p in (study / "data").iterdir() if p.is_dir())
    for i, name in enumerate(names):
        shutil.copytree(study, root / name / "study", ignore=shutil.ignore_patterns("data"))
        shutil.copytree(generated[i % len(generated)], root / name / "data")
    return names


def stamps(log: Path) -> dict[str, float]:
    """When each mark first appears in the server's trail (the last join's time for ``joined``), epoch seconds."""
    out: dict[str, float] = {}
    for line in log.read_text().splitlines():
        when = dt.datetime.strptime(line.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()
        for mark, text in MARKS.items():
            if text in line and (mark == "joined" or mark not in out):
                out[mark] = when
    return out


def once(root: Path, names: list[str]) -> dict[str, float]:
    report = root / "report"
    shutil.rmtree(report, ignore_errors=True)
    shutil.rmtree(root / "server" / "state", ignore_errors=True)
    port = free_port()
    launched = time.time()
    server = subprocess.Popen(
        [*CLI, "server", str(root / "server-study" / "job.yaml"), "--kit", str(root / "server"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sites = [
        subprocess.Popen(
            [
                *CLI,
                "site",
                "--kit",
                str(root / "sites" / name),
                "--data",
                str(root / name / "data"),
                "--code",
                str(root / name / "study"),
                "--server",
                f"localhost:{port}",
                "--models",
                str(root / name / "models"),
                "--approve",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in names
    ]
    try:
        out, _ = server.communicate(timeout=300)
        for site in sites:
            site.communicate(timeout=120)
    finally:
        for process in (server, *sites):
            process.kill()
    if server.returncode != 0:
        raise SystemExit(f"the server failed:\n{out}")
    return {mark: when - launched for mark, when in stamps(report / "server.log").items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=["built", "file"], default=["built", "file"])
    args = parser.parse_args()
    print(f"start to first round: server and {args.sites} sites launched together, TLS on loopback")
    print(f"seconds after launch, median of {args.runs} runs (each run's figures in brackets); target: round 1 < 3 s")
    for mode in args.modes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            names = prepare(root, args.sites, initial_file=mode == "file")
            runs = [once(root, names) for _ in range(args.runs)]
        print(
            "the server builds the initial model (torch)"
            if mode == "built"
            else "the job gives the initial model (confide init; no torch at the server)"
        )
        for mark in MARKS:
            values = [r[mark] for r in runs if mark in r]
            shown = ", ".join(f"{v:.2f}" for v in values)
            label = "last site joined" if mark == "joined" else mark
            print(f"  {label:<18} {statistics.median(values):6.2f} s  [{shown}]")


if __name__ == "__main__":
    main()
