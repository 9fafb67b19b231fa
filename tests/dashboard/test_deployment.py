"""The dashboard of a real deployment: `confide server --dashboard 0` with two site processes over gRPC and mutual
TLS on 127.0.0.1, and a revoked site knocking. While the job runs, the dashboard (and `confide status`) shows who
is connected and when each was last heard, the rounds, each update's filters, the epsilon the sites report, and
the refused connection."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from confide.dashboard.files import PLACE_FILE, TOKEN_FILE
from confide.provision import parse_federation, provision, revoke_site
from tests.dashboard.support import request, table_csv
from tests.e2e.processes import CLI, free_port, start

pytestmark = pytest.mark.slow
SITES = ("north", "south")
WAIT_S = 240  # three processes importing torch on a shared two-core machine


def _site(kits: Path, name: str, csv: Path, port: int) -> subprocess.Popen[str]:
    kit = str(kits / "sites" / name)
    return start("site", "--kit", kit, "--data", str(csv), "--server", f"localhost:{port}", "--approve")


def _until(what: str, server: subprocess.Popen[str], look: Callable[[], Any]) -> Any:
    """``look()`` once it gives something, waiting as long as the server runs (at most WAIT_S)."""
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        found = look()
        if found:
            return found
        if server.poll() is not None:
            pytest.fail(f"the server ended before {what}: {server.communicate()[0][-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"no {what} within {WAIT_S} s")


def test_a_deployments_dashboard_and_status_show_the_live_federation(tmp_path: Path) -> None:
    kits = tmp_path / "kits"
    provision(
        parse_federation({"name": "dash", "server": {"host": "localhost", "port": 8443}, "sites": [*SITES, "east"]}),
        kits,
    )
    revoke_site(kits, "east", "left the federation")
    csv = table_csv(tmp_path / "t.csv", sites=(*SITES, "east"))
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: dash-deploy\ntask: {name: table, target: label, features: [x1, x2]}\n"
        f"data: {{root: {csv}, test_fraction: 0.3}}\n"
        # many short rounds: the job is still running when the test looks (it stops the processes itself)
        "federation: {rounds: 500, local_steps: 1, min_sites: 2, round_deadline_s: 120}\n"
        "privacy: {filters: [{type: gaussian, clip: 1.0, noise_multiplier: 50.0}]}\nfinetune: {steps: 0}\n"
        f"report: {{out: {tmp_path / 'report'}}}\n"
    )
    port = free_port()
    server_kit = kits / "server"
    server = start("server", str(job), "--kit", str(server_kit), "--port", str(port), "--dashboard", "0")
    processes = [server]
    try:
        _until("dashboard.json", server, lambda: (server_kit / PLACE_FILE).is_file())
        url = json.loads((server_kit / PLACE_FILE).read_text())["url"]
        token = (server_kit / TOKEN_FILE).read_text().strip()

        def state() -> dict[str, Any]:
            status, _, body = request(url + "api/state", token=token)
            assert status == 200, body
            return dict(json.loads(body))

        waiting = _until("the first site waiting", server, lambda: (s := state())["sites"] == [] and s)
        assert waiting["status"] == "waiting for sites: 0 connected, 2 needed" and waiting["mode"] == "deployment"
        processes += [_site(kits, name, csv, port) for name in SITES]
        processes.append(_site(kits, "east", csv, port))  # revoked: every call it makes is refused

        snap = _until(
            "two closed rounds, the revoked site refused",
            server,
            lambda: (s := state())["rounds_closed"] >= 2 and s["refused"] and s,
        )
        sites = {site["name"]: site for site in snap["sites"]}
        assert set(sites) == set(SITES)  # a refused certificate is no site
        for site in sites.values():
            assert site["connected"] and site["last_heard_s"] is not None and site["last_heard_s"] < 60
            assert site["accepted"] >= 1 and site["update"]["filters"] == ["gaussian"]
            assert site["update"]["recorded"]["epsilon"] > 0 and site["update"]["metrics"] == {}
        assert "revoked" in snap["refused"][-1]["reason"]
        closed = [r for r in snap["rounds"] if r["status"] == "closed"]
        assert sorted(closed[0]["accepted"]) == list(SITES) and closed[0]["coordination_seconds"] is not None
        assert snap["privacy"]["source"] == "reported" and "cannot check" in snap["privacy"]["note"]
        assert {ledger["site"] for ledger in snap["privacy"]["ledgers"]} == set(SITES)
        assert snap["job"]["name"] == "dash-deploy"
        assert request(url + "api/state", token="not-the-token-at-all")[0] == 401
        assert stat.S_IMODE((server_kit / TOKEN_FILE).stat().st_mode) == 0o600

        shown = subprocess.run(
            [*CLI, "status", "--kit", str(server_kit)], capture_output=True, text=True, timeout=WAIT_S, check=False
        )
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "north" in shown.stdout and "south" in shown.stdout and "refused connections" in shown.stdout
        assert "gaussian" in shown.stdout and "dash-deploy (deployment" in shown.stdout
    finally:
        for process in processes:
            process.kill()
            process.communicate(timeout=60)

    gone = subprocess.run([*CLI, "status", "--kit", str(server_kit)], capture_output=True, text=True, check=False)
    assert gone.returncode == 2 and "no dashboard answers" in gone.stdout
    assert (server_kit / TOKEN_FILE).read_text().strip() == token  # kept for the next run
