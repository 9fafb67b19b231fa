"""One job set-up for the simulator and the deployment (confide.job_plan)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from confide import job_plan
from confide.config import parse_job
from confide.errors import ConfigError
from confide.new_task import new_task
from confide.privacy.build import site_chain
from confide.privacy.config import PrivacyConfig
from confide.server.loop import RoundResult
from confide.sim import simulate
from confide.workloads.registry import make_workload


def _job(tmp_path: Path, **federation: object) -> object:
    study = tmp_path / "study"
    new_task(study)
    return parse_job(
        {
            "name": "plan",
            "task": {"name": "python", "entry": "task:task", "code": str(study), "lr": 0.01},
            "data": {"root": str(study / "data")},
            "federation": {"rounds": 2, "local_steps": 2, "min_sites": 2, **federation},
            "privacy": {"filters": [{"type": "gaussian", "clip": 1.0, "noise_multiplier": 1.0}]},
        }
    )


def test_the_simulator_and_the_deployment_get_the_same_deadline_bound_caps_and_evaluation(tmp_path: Path) -> None:
    job = _job(tmp_path, max_update_norm=5.0, max_examples=100, round_deadline_s=90, evaluate_every=2)

    simulated = job_plan.loop_settings(job, sites=3, secure=None, deployed=False)  # type: ignore[arg-type]
    deployed = job_plan.loop_settings(job, sites=3, secure=None, deployed=True, checkpoint_dir=tmp_path)  # type: ignore[arg-type]

    for settings in (simulated, deployed):
        assert settings.deadline_s == 90 and settings.evaluate_every == 2 and settings.min_sites == 2
        assert settings.guard.max_norm == 5.0 and settings.guard.max_examples == 100
    assert (simulated.quorum_retries, simulated.checkpoint_dir) == (0, None)  # a simulated site fails again
    assert deployed.quorum_retries == 3 and deployed.checkpoint_dir == tmp_path


def test_distributed_noise_is_sized_alike_when_the_sites_policy_matches_the_job(tmp_path: Path) -> None:
    job = _job(tmp_path)
    policy = PrivacyConfig(min_contributors=2)  # a deployed site whose policy counts on the job's quorum

    simulated = site_chain(job_plan.simulated_privacy(job, sites=3))  # type: ignore[arg-type]
    deployed = site_chain(job_plan.deployed_privacy(job, policy))  # type: ignore[arg-type]

    (sim_noise,), (dep_noise,) = simulated.filters, deployed.filters
    assert (sim_noise.sites, sim_noise.noise_multiplier) == (dep_noise.sites, dep_noise.noise_multiplier) == (2, 1.0)  # type: ignore[attr-defined]


def test_federated_evaluation_every_n_rounds_records_each_sites_scores(tmp_path: Path) -> None:
    job = _job(tmp_path, evaluate_every=1).model_copy(update={"privacy": PrivacyConfig()})  # type: ignore[attr-defined]
    workload = make_workload(job.task)
    sites = workload.load_sites(job.data, job.seed, lambda _: None)
    tasks = {s.name: workload.task(s.train, s.test, site=s.name, seed=0, dp_sgd=None) for s in sites}
    strategy = job_plan.build_strategy(job, sites=3, batch=8, norm_names=workload.norm_names)
    rounds: list[RoundResult] = []

    class Keep:
        def round_started(self, round: int, sites: list[str]) -> None: ...

        def site_finished(self, round: int, site: str, ok: bool, detail: str) -> None: ...

        def round_finished(self, result: RoundResult, global_arrays: object) -> None:
            rounds.append(result)

    settings = job_plan.loop_settings(job, sites=3, secure=None, deployed=False)
    simulate(strategy, tasks, workload.initial(0), settings, events=Keep())

    assert [r.round for r in rounds] == [1, 2]
    for result in rounds:
        assert set(result.eval_metrics) == {"hospital-a", "hospital-b", "hospital-c"}
        assert all(0.0 <= m["balanced_accuracy"] <= 1.0 for m in result.eval_metrics.values())


def test_fedbn_on_a_model_without_norm_layers_is_refused_naming_the_task(tmp_path: Path) -> None:
    job = _job(tmp_path).model_copy(update={"privacy": PrivacyConfig()})  # type: ignore[attr-defined]
    job = job.model_copy(update={"federation": job.federation.model_copy(update={"strategy": "fedbn"})})

    with pytest.raises(ConfigError, match=r"fedbn .* 'python' has none"):
        job_plan.build_strategy(job, sites=3, batch=8, norm_names=make_workload(job.task).norm_names)


def test_the_server_side_of_a_deployment_imports_neither_torch_nor_the_accountant() -> None:
    code = (
        "import sys; import confide.deploy, confide.job_plan, confide.strategies; "
        "print(sorted(m for m in ('torch', 'scipy', 'dp_accounting', 'confide.experiment') if m in sys.modules))"
    )

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert out.strip() == "[]"
