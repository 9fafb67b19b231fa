"""A site's own policy outranks the job; a budget stops a site from training, and the server hears why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from confide.cli import app
from confide.config import parse_job
from confide.errors import ConfigError
from confide.privacy.build import site_chain, site_ledger
from confide.privacy.config import PrivacyConfig, load_policy, stricter
from confide.server.loop import LoopConfig
from confide.sim import simulate
from confide.strategies import make_strategy
from tests.helpers import QuadraticTask, arrays

TARGETS = {"a": arrays(w=[2.0, 0.0]), "b": arrays(w=[0.0, 2.0]), "c": arrays(w=[1.0, 1.0])}


def _privacy(**document: object) -> PrivacyConfig:
    return PrivacyConfig.model_validate(document)


def test_a_job_asking_for_less_privacy_runs_with_the_policy() -> None:
    policy = _privacy(
        filters=[{"type": "gaussian", "clip": 1.0, "noise_multiplier": 1.5}, {"type": "sparsify", "fraction": 0.25}],
        budget={"epsilon": 4.0},
    )
    job = _privacy(
        filters=[{"type": "gaussian", "clip": 5.0, "noise_multiplier": 0.5}], budget={"epsilon": 50.0}, missing="zero"
    )

    run = stricter(job, policy)

    gaussian = run.gaussian
    assert gaussian is not None and (gaussian.clip, gaussian.noise_multiplier) == (1.0, 1.5)
    assert [f.type for f in run.filters] == ["gaussian", "sparsify"]  # the job cannot drop the policy's filter
    assert run.budget is not None and run.budget.epsilon == 4.0
    assert stricter(_privacy(), policy).filters == run.filters  # nor remove them all
    assert run.missing == "zero"  # how the server reads sparse updates is the job's


def test_the_policy_file_in_a_kit_is_read_and_checked(tmp_path: Path) -> None:
    assert load_policy(tmp_path) is None
    (tmp_path / "privacy.yaml").write_text(yaml.safe_dump({"budget": {"epsilon": -1}}))

    with pytest.raises(ConfigError, match=r"budget\.epsilon"):
        load_policy(tmp_path)


@pytest.mark.parametrize(
    ("privacy", "named"),
    [
        (
            {
                "filters": [
                    {"type": "sparsify", "fraction": 0.1},
                    {"type": "gaussian", "clip": 1, "noise_multiplier": 1},
                ]
            },
            "before sparsify",
        ),
        ({"filters": [{"type": "sparsify", "fraction": 0.1}], "secure_aggregation": True}, "secure aggregation"),
        (
            {
                "filters": [{"type": "gaussian", "clip": 1, "noise_multiplier": 1, "placement": "server"}],
                "secure_aggregation": True,
            },
            "placement: site",
        ),
        ({"budget": {"epsilon": 3}}, "needs a mechanism"),
        ({"filters": [{"type": "gaussian", "clip": 1, "noise_multiplier": 1}], "strategy": "median"}, "DP-FedAvg"),
        ({"filters": [{"type": "laplace"}]}, "laplace"),
    ],
)
def test_combinations_that_cannot_work_are_refused_with_a_reason(privacy: dict[str, object], named: str) -> None:
    strategy = privacy.pop("strategy", "fedavg")
    with pytest.raises(ConfigError, match=named):
        parse_job({"data": {"root": "x"}, "federation": {"strategy": strategy}, "privacy": privacy})


def test_a_spent_budget_stops_training_and_keeps_the_model_of_the_last_round() -> None:
    """Before: the refused round raised out of the simulation, losing the model, the ledger and the report."""
    privacy = _privacy(filters=[{"type": "gaussian", "clip": 1.0, "noise_multiplier": 6.0}], budget={"epsilon": 2.5})
    tasks = {name: QuadraticTask(t, examples=10) for name, t in TARGETS.items()}
    ledgers = {name: site_ledger(privacy, name, None) for name in tasks}

    result = simulate(
        make_strategy("fedavg", {"lr": 0.5}, privacy=privacy),
        tasks,
        arrays(w=[0.0, 0.0]),
        LoopConfig(rounds=50, quorum_retries=3, retry_wait_s=600.0),  # a spent budget is not retried
        chains={name: site_chain(privacy, 3) for name in tasks},
        ledgers=ledgers,
    )

    done = len(result.history.rounds)
    assert 2 <= done < 50
    assert result.history.stopped is not None and "privacy budget" in result.history.stopped
    assert float(np.abs(result.arrays["w"]).max()) > 0  # the model trained so far is kept
    for ledger in ledgers.values():
        assert ledger is not None and 0 < ledger.epsilon <= 2.5
        assert len(ledger.entries) == done


def test_a_failed_round_without_budget_refusals_still_fails() -> None:
    tasks = {"a": QuadraticTask(TARGETS["a"], 10, fail=True), "b": QuadraticTask(TARGETS["b"], 10)}

    from confide.errors import BudgetSpent, RoundFailed

    with pytest.raises(RoundFailed) as caught:
        simulate(make_strategy("fedavg", {"lr": 0.5}), tasks, arrays(w=[0.0, 0.0]), LoopConfig(rounds=2, min_sites=2))
    assert not isinstance(caught.value, BudgetSpent)


def test_a_private_simulation_writes_its_ledger_and_the_report_command_prints_it(tmp_path: Path) -> None:
    from confide.kinds.brain_tumor.phantom_writer import write_federation

    write_federation(tmp_path / "data", sites=2, cases=3, seed=0)
    job = {
        "seed": 1,
        "task": {"roi": [16, 16, 16], "init_filters": 4},
        "data": {"root": str(tmp_path / "data"), "test_fraction": 0.34},
        "federation": {"rounds": 2, "local_steps": 1, "min_sites": 2},
        "privacy": {
            "filters": [
                {"type": "gaussian", "clip": 0.5, "noise_multiplier": 1.0},
                {"type": "sparsify", "fraction": 0.4},
            ]
        },
        "report": {"out": str(tmp_path / "run"), "plots": False},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))

    simulated = CliRunner().invoke(app, ["simulate", str(tmp_path / "job.yaml")])
    assert simulated.exit_code == 0, simulated.output
    printed = CliRunner().invoke(app, ["privacy", "report", str(tmp_path / "run")], terminal_width=200)

    assert printed.exit_code == 0, printed.output
    assert printed.output.count("gaussian-site") == 4  # 2 sites x 2 rounds
    assert "site-1: epsilon" in printed.output and "site-2: epsilon" in printed.output
    assert "Privacy ledger" in (tmp_path / "run" / "report.md").read_text()
    missing = CliRunner().invoke(app, ["privacy", "report", str(tmp_path)])
    assert missing.exit_code == 2 and "no privacy ledger" in missing.output
    assert np.isfinite(float(printed.output.split("site-1: epsilon ")[1].split()[0]))


def test_a_simulation_that_spends_its_budget_still_writes_the_ledger_and_the_report(tmp_path: Path) -> None:
    """Before: a spent budget aborted `confide simulate` with no ledger or report written."""
    from confide.kinds.brain_tumor.phantom_writer import write_federation

    write_federation(tmp_path / "data", sites=2, cases=3, seed=0)
    job = {
        "seed": 1,
        "task": {"roi": [16, 16, 16], "init_filters": 4},
        "data": {"root": str(tmp_path / "data"), "test_fraction": 0.34},
        "federation": {"rounds": 6, "local_steps": 1, "min_sites": 2},
        "compare": [],
        "finetune": {"steps": 0},
        "privacy": {
            "filters": [{"type": "gaussian", "clip": 0.5, "noise_multiplier": 5.0}],  # 1.16, 1.69, 2.12 ...
            "budget": {"epsilon": 2.0, "delta": 1e-5},
        },
        "report": {"out": str(tmp_path / "run")},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))

    simulated = CliRunner().invoke(app, ["simulate", str(tmp_path / "job.yaml")])

    assert simulated.exit_code == 0, simulated.output
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Training stopped early" in report and "privacy budget" in report
    assert "![privacy ledger](privacy_ledger.png)" in report
    assert (tmp_path / "run" / "privacy_ledger.png").stat().st_size > 1000
    assert "Privacy ledger" in (tmp_path / "run" / "report.html").read_text()
    for site in ("site-1", "site-2"):
        ledger = json.loads((tmp_path / "run" / "privacy" / f"{site}.json").read_text())
        assert 0 < ledger["entries"][-1]["epsilon_total"] <= 2.0 and len(ledger["entries"]) < 6
