"""Tracking reaches nothing over the network: MLflow's usage telemetry is off in a process that is not a test (MLflow
turns it off by itself under pytest and CI, so these run in a clean child process), and the local store is all a
tracked job writes to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

_QUIET = {
    "PYTEST_CURRENT_TEST",
    "CI",
    "GITHUB_ACTIONS",
    "CIRCLECI",
    "GITLAB_CI",
    "JENKINS_URL",
    "TRAVIS",
    "TF_BUILD",
    "BITBUCKET_BUILD_NUMBER",
    "CODEBUILD_BUILD_ARN",
    "BUILDKITE",
    "TEAMCITY_VERSION",
    "MLFLOW_DISABLE_TELEMETRY",
    "DO_NOT_TRACK",
}
"""What marks a process as a test or CI run, where MLflow turns its telemetry off by itself."""


def _outside_pytest(tmp_path: Path, mlflow_first: bool) -> dict[str, Any]:
    """A process with every connection and name lookup refused and counted that tracks one round to MLflow (after
    importing MLflow itself, as a user's program may, when ``mlflow_first``); what it saw."""
    script = textwrap.dedent(
        f"""
        import json, socket
        attempts = []
        def refuse(*args, **kwargs):
            attempts.append(repr(args[:2]))
            raise OSError("network refused by the test")
        socket.socket.connect = refuse
        socket.getaddrinfo = refuse
        before = None
        if {mlflow_first!r}:
            import mlflow.telemetry
            before = mlflow.telemetry.get_telemetry_client() is not None
        from confide.config import parse_job
        from confide.report.tracking import open_tracking
        job = parse_job({{"name": "quiet", "data": {{"root": "x"}},
                         "report": {{"out": {str(tmp_path / "out")!r}, "mlflow": True}}}})
        with open_tracking(job, where="simulation") as tracking:
            tracking.scalars("fedavg", 1, {{"train/loss": 0.5}})
            labels = tracking.labels
        import mlflow.telemetry
        after = mlflow.telemetry.get_telemetry_client() is not None
        print(json.dumps({{"before": before, "after": after, "attempts": attempts, "labels": labels}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in _QUIET}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return seen


def test_outside_pytest_tracking_to_a_local_store_reaches_nothing_over_the_network(tmp_path: Path) -> None:
    seen = _outside_pytest(tmp_path, mlflow_first=False)

    assert seen["labels"] == ["report.mlflow"]  # tracked to the end, nothing failed
    assert seen["attempts"] == []
    assert seen["after"] is False  # MLflow's telemetry never started
    assert list((tmp_path / "out" / "mlruns").glob("*/*/metrics/train/loss"))


def test_mlflow_telemetry_started_by_an_earlier_import_is_stopped(tmp_path: Path) -> None:
    seen = _outside_pytest(tmp_path, mlflow_first=True)

    if not seen["before"]:
        pytest.skip("MLflow's telemetry is off in this environment whatever Confide does: nothing to turn off")
    assert seen["after"] is False
