"""``confide privacy audit`` end to end, CI-sized, and its refusal of a lower bound above the ledger."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import confide.audit.run
from confide.audit.result import AuditResult, AuditRow
from confide.cli import app


@pytest.mark.parametrize("task", ["table", "image"])
def test_the_quick_audit_runs_end_to_end_and_writes_its_files(task: str, tmp_path: Path) -> None:
    # the audit's own CPU time, not the wall clock: on a loaded CI machine the image audit (15 s of CPU) took 25 s
    # of wall time beside one other busy process; the audit runs in this thread (torch on one intra-op thread)
    began = time.thread_time()

    result = CliRunner().invoke(app, ["privacy", "audit", "--task", task, "--out", str(tmp_path), "--seed", "1"])

    assert result.exit_code == 0, result.output
    assert time.thread_time() - began < 60
    assert "no privacy" in result.output and "DP-SGD" in result.output
    document = json.loads((tmp_path / "audit.json").read_text())
    assert [row["config"] for row in document["rows"]] == ["none", "gaussian", "dp-sgd", "sparsify"]
    assert document["violations"] == [] and document["rows"][0]["ledger_epsilon"] == "inf"
    assert "| no privacy |" in (tmp_path / "audit.md").read_text()
    figures = ["audit_epsilon.png", *(["audit_inversion.png"] if task == "image" else [])]
    for name in figures:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_a_lower_bound_above_the_ledger_fails_the_command_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = AuditRow("dp-sgd", "DP-SGD (sigma=1, clip 1)", 1.0, 1.0, 2.5, "membership", {"auc": 0.99}, "fabricated")

    def fabricated(*args: object, **kwargs: object) -> AuditResult:
        return AuditResult("table", "a fabricated audit", (broken,), (), {"confidence": 0.95, "delta": 1e-5}, 0.0)

    monkeypatch.setattr(confide.audit.run, "run_audit", fabricated)

    result = CliRunner().invoke(app, ["privacy", "audit", "--task", "table", "--out", str(tmp_path)])

    assert result.exit_code == 1
    assert "BUG" in result.output and "above the ledger's upper bound" in result.output
    assert json.loads((tmp_path / "audit.json").read_text())["violations"]
    assert "## Bugs found" in (tmp_path / "audit.md").read_text()


def test_an_unknown_configuration_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["privacy", "audit", "--task", "table", "--out", str(tmp_path), "--config", "laplace", "--trials", "2"]
    )

    assert result.exit_code == 2 and "laplace" in result.output
