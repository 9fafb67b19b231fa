"""A task written outside Confide (``confide new``), deployed: one server process and three hospital processes over
gRPC with mutual TLS, each hospital importing the task from its own copy of the code."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from confide.new_task import new_task
from confide.provision import parse_federation, provision

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "confide.cli"]
HOSPITALS = ["hospital-a", "hospital-b", "hospital-c"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _federation(tmp_path: Path) -> tuple[Path, Path]:
    """Kits for the server and three hospitals, and the server's copy of the study (its job shortened)."""
    kits = tmp_path / "kits"
    federation = {"name": "own", "server": {"host": "localhost", "port": 8443}, "sites": HOSPITALS}
    provision(parse_federation(federation), kits)
    study = tmp_path / "server" / "study"
    new_task(study)
    job = yaml.safe_load((study / "job.yaml").read_text())
    job["federation"].update({"rounds": 2, "local_steps": 3, "round_deadline_s": 120})
    job["finetune"] = {"steps": 2}
    job["report"] = {"out": str(tmp_path / "report")}
    (study / "job.yaml").write_text(yaml.safe_dump(job))
    return kits, study


def _site(kits: Path, name: str, code: Path | None, data: Path, port: int) -> subprocess.Popen[str]:
    command = [*CLI, "site", "--kit", str(kits / "sites" / name), "--data", str(data), "--server", f"localhost:{port}"]
    if code is not None:
        command += ["--code", str(code)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_users_task_runs_in_a_tls_deployment_each_site_with_its_own_code(tmp_path: Path) -> None:
    kits, study = _federation(tmp_path)
    copies = {}
    for name in HOSPITALS:  # each hospital has its own copy of the code and only its own data
        copies[name] = tmp_path / name / "study"
        shutil.copytree(study, copies[name], ignore=shutil.ignore_patterns("data"))
        shutil.copytree(study / "data" / name, tmp_path / name / "data")
    shutil.rmtree(study / "data")  # the server reads no data
    port = _free_port()
    server = subprocess.Popen(
        [*CLI, "server", str(study / "job.yaml"), "--kit", str(kits / "server"), "--port", str(port), "--wait", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sites = [_site(kits, name, copies[name], tmp_path / name / "data", port) for name in HOSPITALS]
    try:
        server_out, _ = server.communicate(timeout=300)
        site_outs = [s.communicate(timeout=120)[0] for s in sites]
    finally:
        for process in (server, *sites):
            process.kill()

    assert server.returncode == 0, server_out
    assert all(s.returncode == 0 for s in sites), site_outs
    rounds = json.loads((tmp_path / "report" / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(sorted(r["sites"]) == HOSPITALS and not r["failures"] for r in rounds)
    for name, out in zip(HOSPITALS, site_outs, strict=True):
        models = kits / "sites" / name / "models" / "study"
        kept = models / json.loads((models / "latest.json").read_text())["run"]
        scores = json.loads((kept / "own-test.json").read_text())
        assert 0.0 <= scores["global"]["balanced_accuracy"] <= 1.0, out
        assert set(scores) == {"global", "finetuned"}


def test_a_site_without_its_own_copy_of_the_code_refuses_the_job(tmp_path: Path) -> None:
    kits, study = _federation(tmp_path)
    port = _free_port()
    server = subprocess.Popen(
        [*CLI, "server", str(study / "job.yaml"), "--kit", str(kits / "server"), "--port", str(port), "--wait", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    site = _site(kits, "hospital-a", None, study / "data" / "hospital-a", port)
    try:
        site_out, _ = site.communicate(timeout=180)
    finally:
        for process in (server, site):
            process.kill()

    assert site.returncode != 0
    assert "--code" in site_out and "task:task" in site_out
