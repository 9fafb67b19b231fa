"""What a site logs at INFO as it happens (`confide site --verbose` shows it): its join, each instruction, the
retries while its server is not there yet and the reconnection once it is."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from confide.deploy import serve
from confide.deploy_site import run_site
from tests.e2e.processes import free_port
from tests.helpers import arrays
from tests.site import deployed


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_site_started_before_its_server_logs_its_retries_the_reconnection_and_its_join(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="confide")
    kits = deployed.federation(tmp_path / "kits")
    job = deployed.job(tmp_path, rounds=1, min_sites=1)
    job = job.model_copy(update={"federation": job.federation.model_copy(update={"start_sites": 1})})
    port = free_port()
    outcome: list[object] = []

    def site() -> None:
        try:
            outcome.append(
                run_site(kits / "sites" / "site-1", deployed.quadratic, address=f"localhost:{port}", give_up_after_s=60)
            )
        except Exception as exc:  # reported to the test
            outcome.append(exc)

    def messages() -> str:
        return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("confide.transport"))

    thread = threading.Thread(target=site, daemon=True)
    thread.start()
    retried = _wait_for(lambda: "join: server unreachable (UNAVAILABLE), retrying" in messages(), 60)
    final = serve(kits / "server", job, initial=lambda _: arrays(w=[0.0, 0.0]), port=port, wait_s=60)
    thread.join(60)

    assert retried and final.is_file() and outcome == [1]
    text = messages()
    assert "join: reached the server again after" in text
    assert f"site site-1 joined the server at localhost:{port}" in text
    assert "site site-1: instruction" in text and "received (" in text
