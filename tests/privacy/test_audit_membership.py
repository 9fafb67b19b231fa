"""The table audit: canary membership in one site's real update, one-run epsilon lower bounds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from confide.audit.result import AuditResult, Silent
from confide.audit.run import run_audit
from confide.audit.settings import quick
from confide.privacy.audit_membership import dirac_canaries


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> AuditResult:
    settings = quick(seed=0)
    settings = replace(settings, configs=("none", "dp-sgd"), table=replace(settings.table, rounds=12))
    return run_audit("table", settings, data=None, out=tmp_path_factory.mktemp("audit"), progress=Silent())


def test_canaries_are_one_feature_far_out_each() -> None:
    rows = dirac_canaries(3, 6, 10.0)

    assert rows.tolist() == [[10, 0, 0], [0, 10, 0], [0, 0, 10], [-10, 0, 0], [0, -10, 0], [0, 0, -10]]


def test_without_privacy_membership_of_canaries_shows(audited: AuditResult) -> None:
    plain = {r.config: r for r in audited.rows}["none"]

    assert plain.metrics["auc"] > 0.8
    assert plain.lower_epsilon > 1.0
    assert np.isinf(plain.ledger_epsilon) and plain.violation is None


def test_the_one_run_bound_under_dp_sgd_stays_below_the_ledger(audited: AuditResult) -> None:
    private = {r.config: r for r in audited.rows}["dp-sgd"]

    assert 0 < private.ledger_epsilon == pytest.approx(private.record_epsilon)
    assert private.lower_epsilon < private.ledger_epsilon
    assert private.metrics["auc"] < 0.8
    assert not audited.violations


def test_the_real_heart_disease_table_can_be_audited(shared_data: Path, tmp_path: Path) -> None:
    table = shared_data / "heart_disease" / "heart_disease_uci.csv"
    if not table.is_file():
        pytest.skip(f"heart-disease table not found at {table}")
    settings = quick(seed=0)
    settings = replace(settings, configs=("none",), table=replace(settings.table, rounds=4))

    result = run_audit("table", settings, data=table, out=tmp_path, progress=Silent())

    assert "Cleveland" in result.notes[0] and result.rows[0].metrics["auc"] > 0.7
