"""Issue 10, part 3: the site's policy decides every point of its privacy; a job can only make it stricter."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from confide.config import parse_job
from confide.deploy_site import private_runner
from confide.privacy.config import PrivacyConfig, stricter
from confide.privacy.gaussian import GaussianClientDP
from confide.records import TrainIns
from tests.helpers import QuadraticTask, arrays

GAUSS = {"type": "gaussian", "clip": 1.0, "noise_multiplier": 2.0}


def _privacy(**document: object) -> PrivacyConfig:
    return PrivacyConfig.model_validate(document)


def _kit(tmp_path: Path, policy: dict[str, object] | None) -> Path:
    kit = tmp_path / "kit"
    kit.mkdir(exist_ok=True)
    if policy is not None:
        (kit / "privacy.yaml").write_text(yaml.safe_dump(policy))
    return kit


def _gaussian(runner: object) -> GaussianClientDP:
    (only,) = [f for f in runner.chain.filters if isinstance(f, GaussianClientDP)]  # type: ignore[attr-defined]
    return only


def test_epsilon_and_delta_are_each_the_smaller() -> None:
    """Before: min over (epsilon, delta) pairs, so a policy (5, 1e-6) against a job (4, 1e-3) ran at delta 1e-3."""
    policy = _privacy(filters=[GAUSS], budget={"epsilon": 5.0, "delta": 1e-6})
    job = _privacy(filters=[GAUSS], budget={"epsilon": 4.0, "delta": 1e-3})

    run = stricter(job, policy)

    assert run.budget is not None and (run.budget.epsilon, run.budget.delta) == (4.0, 1e-6)


@pytest.mark.parametrize(
    ("policy_placement", "job_placement", "expected"),
    [
        ("server", "site", "site"),  # before: the site only clipped, the server added nothing, the ledger charged
        ("site", "server", "site"),  # the policy wants its own noise: it adds it whatever the server does
        (None, "server", "site"),  # no policy: the server is trusted with nothing
        ("server", "server", "server"),  # only a policy that trusts the server accepts central noise
    ],
)
def test_noise_placement_is_the_policys(policy_placement: str | None, job_placement: str, expected: str) -> None:
    policy = None if policy_placement is None else _privacy(filters=[{**GAUSS, "placement": policy_placement}])
    job = _privacy(filters=[{**GAUSS, "placement": job_placement}])

    run = stricter(job, policy)

    assert run.gaussian is not None and run.gaussian.placement == expected


def test_a_site_that_adds_its_own_noise_really_adds_it(tmp_path: Path) -> None:
    kit = _kit(tmp_path, {"filters": [{**GAUSS, "placement": "site"}], "min_contributors": 4})
    job = parse_job({"data": {"root": "x"}, "privacy": {"filters": [{**GAUSS, "placement": "server"}]}})
    task = QuadraticTask(arrays(w=[0.0] * 1000), examples=5)

    runner = private_runner(kit, "a", job, task)
    res = runner._train(TrainIns(round=1, arrays=arrays(w=[0.0] * 1000), config={"lr": 0.0, "local_steps": 1}))

    assert _gaussian(runner).placement == "site"
    assert float(res.update["w"].std()) == pytest.approx(2.0 * 1.0 / 2.0, rel=0.15)  # type: ignore[union-attr]


def test_the_share_of_distributed_noise_comes_from_the_policy_not_the_job(tmp_path: Path) -> None:
    """Before: min_sites 400 in the job made each site send noise multiplier 0.1 where its policy said 2."""
    kit = _kit(tmp_path, {"filters": [GAUSS], "min_contributors": 4})
    job = parse_job(
        {
            "data": {"root": "x"},
            "federation": {"min_sites": 400},
            "privacy": {"filters": [GAUSS], "min_contributors": 400},
        }
    )

    gaussian = _gaussian(private_runner(kit, "a", job, QuadraticTask(arrays(w=[0.0]), 1)))

    assert gaussian.sites == 4
    assert gaussian.spend().noise_multiplier == pytest.approx(2.0 / 2.0)


def test_a_job_may_ask_for_fewer_contributors_but_not_more(tmp_path: Path) -> None:
    kit = _kit(tmp_path, {"filters": [GAUSS], "min_contributors": 4})
    job = parse_job({"data": {"root": "x"}, "privacy": {"filters": [GAUSS], "min_contributors": 2}})

    gaussian = _gaussian(private_runner(kit, "a", job, QuadraticTask(arrays(w=[0.0]), 1)))

    assert gaussian.sites == 2


def test_a_site_without_a_policy_adds_the_full_noise_itself(tmp_path: Path) -> None:
    kit = _kit(tmp_path, None)
    job = parse_job({"data": {"root": "x"}, "federation": {"min_sites": 3}, "privacy": {"filters": [GAUSS]}})

    gaussian = _gaussian(private_runner(kit, "a", job, QuadraticTask(arrays(w=[0.0]), 1)))

    assert gaussian.sites == 1 and gaussian.own_std == pytest.approx(2.0)


def test_the_budget_is_kept_per_kit_across_jobs_whatever_their_names(tmp_path: Path) -> None:
    """Before: one ledger per job name, so renaming the job started the budget from zero."""
    kit = _kit(tmp_path, {"filters": [GAUSS], "budget": {"epsilon": 3.0}})
    task = QuadraticTask(arrays(w=[0.0, 0.0]), examples=5)
    first = parse_job({"name": "study", "data": {"root": "x"}, "privacy": {"filters": [GAUSS]}})
    renamed = parse_job({"name": "study-again", "data": {"root": "x"}, "privacy": {"filters": [GAUSS]}})
    ins = TrainIns(round=1, arrays=arrays(w=[0.0, 0.0]), config={"lr": 0.1})

    runner = private_runner(kit, "a", first, task)
    rounds = 0
    while not hasattr(runner._train(ins), "reason"):
        rounds += 1
    again = private_runner(kit, "a", renamed, task)

    assert rounds >= 1 and again.ledger is not None
    assert again.ledger.epsilon == pytest.approx(runner.ledger.epsilon)  # type: ignore[union-attr]
    assert "privacy budget" in again._train(ins).reason  # type: ignore[union-attr]
    assert {e.job for e in again.ledger.entries} == {"study"}


def test_the_report_command_reads_a_kits_ledger_across_jobs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from confide.cli import app

    kit = _kit(tmp_path, {"filters": [GAUSS]})
    task = QuadraticTask(arrays(w=[0.0, 0.0]), examples=5)
    ins = TrainIns(round=1, arrays=arrays(w=[0.0, 0.0]), config={"lr": 0.1})
    for name in ("first-study", "second-study"):
        private_runner(kit, "a", parse_job({"name": name, "data": {"root": "x"}}), task)._train(ins)

    printed = CliRunner().invoke(app, ["privacy", "report", str(kit)], terminal_width=200)

    assert printed.exit_code == 0, printed.output
    assert "first-study" in printed.output and "second-study" in printed.output
    assert re.search(r"first-study +│ +1 ", printed.output) and re.search(
        r"second-study +│ +1 ", printed.output
    )  # by round
