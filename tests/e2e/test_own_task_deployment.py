"""A task written outside Confide (``confide new``), deployed: one server process and three hospital processes over
gRPC with mutual TLS, each hospital importing the task from its own copy of the code."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from confide.new_task import new_task
from confide.provision import parse_federation, provision
from tests.e2e.processes import finish, free_port, start

pytestmark = pytest.mark.slow
HOSPITALS = ["hospital-a", "hospital-b", "hospital-c"]


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
    own = ["--code", str(code)] if code is not None else []
    own.append("--approve")  # the operator approves the job it is shown (site/consent.py)
    return start(
        "site", "--kit", str(kits / "sites" / name), "--data", str(data), "--server", f"localhost:{port}", *own
    )


def _server(study: Path, kits: Path, port: int, wait_s: int) -> subprocess.Popen[str]:
    return start(
        "server", str(study / "job.yaml"), "--kit", str(kits / "server"), "--port", str(port), "--wait", str(wait_s)
    )


def test_a_users_task_runs_in_a_tls_deployment_each_site_with_its_own_code(tmp_path: Path) -> None:
    kits, study = _federation(tmp_path)
    copies = {}
    for name in HOSPITALS:  # each hospital has its own copy of the code and only its own data
        copies[name] = tmp_path / name / "study"
        shutil.copytree(study, copies[name], ignore=shutil.ignore_patterns("data"))
        shutil.copytree(study / "data" / name, tmp_path / name / "data")
    shutil.rmtree(study / "data")  # the server reads no data
    port = free_port()
    server = _server(study, kits, port, 120)
    sites = [_site(kits, name, copies[name], tmp_path / name / "data", port) for name in HOSPITALS]
    server_out, site_outs = finish(server, sites)

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
    port = free_port()
    server = _server(study, kits, port, 60)
    site = _site(kits, "hospital-a", None, study / "data" / "hospital-a", port)
    try:
        site_out, _ = site.communicate(timeout=180)
    finally:
        for process in (server, site):
            process.kill()

    assert site.returncode != 0
    assert "--code" in site_out and "task:task" in site_out
