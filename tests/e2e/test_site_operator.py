"""The site operator's view, as processes: `confide server --verbose`, a `confide site --approve --verbose` that
shows the job and what left it each round, and a `confide site` without approval that declines and exits non-zero
while the round goes on without it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from confide.kinds.tables.synthetic import synthetic_binary_table
from confide.provision import parse_federation, provision
from tests.e2e.processes import finish, free_port, start

pytestmark = pytest.mark.slow


def test_an_approved_and_a_declining_site_as_the_operator_sees_them(tmp_path: Path) -> None:
    provision(
        parse_federation({"name": "op", "server": {"host": "localhost", "port": 8443}, "sites": ["site-1", "site-2"]}),
        tmp_path / "fed",
    )
    table = tmp_path / "table.csv"
    table.write_text(synthetic_binary_table(["site-1", "site-2"], rows=40, features=3, seed=0))
    job = {
        "name": "operator-view",
        "task": {"name": "table", "target": "y", "features": ["x1", "x2", "x3"], "batch_size": 8},
        "data": {"root": str(table)},
        "federation": {"rounds": 1, "local_steps": 2, "min_sites": 1, "start_sites": 2, "round_deadline_s": 120},
        "privacy": {"filters": [{"type": "gaussian", "clip": 1.0, "noise_multiplier": 1.0}]},
        "report": {"out": str(tmp_path / "report")},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    port = free_port()
    kits = tmp_path / "fed" / "sites"
    common = ["--data", str(table), "--server", f"localhost:{port}"]

    server = start(
        "server", str(tmp_path / "job.yaml"), "--kit", str(tmp_path / "fed" / "server"), "--port", str(port),
        "--wait", "120", "--verbose",
    )  # fmt: skip
    sites = [
        start("site", "--kit", str(kits / "site-1"), *common, "--approve", "--verbose"),
        start("site", "--kit", str(kits / "site-2"), *common),
    ]
    server_out, (approved, declined) = finish(server, sites)

    assert server.returncode == 0, server_out
    assert "INFO confide.transport.grpc_server: site site-1 joined from" in server_out
    assert "INFO confide.server.loop: round 1 of 1: 2 site(s) take part" in server_out
    assert sites[0].returncode == 0, approved
    assert "INFO confide.transport.grpc_client: site site-1 joined the server at" in approved
    assert "the server sends job 'operator-view'" in approved and "    target: y" in approved
    assert "approved for this run by --approve" in approved
    assert "round 1: sent update" in approved and "filters: gaussian" in approved
    assert (kits / "site-1" / "audit" / "releases.jsonl").is_file()
    assert sites[1].returncode == 2, declined
    assert "NOT APPROVED" in declined and "--approve" in declined and "declined job 'operator-view'" in declined
    assert "INFO" not in declined  # no --verbose: warnings only
    (first,) = json.loads((tmp_path / "report" / "rounds.json").read_text())
    assert first["sites"] == ["site-1"] and "declined job 'operator-view'" in first["failures"]["site-2"]
