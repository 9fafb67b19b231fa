"""The Ray engine: the same job gives the same model as in-process; sites keep their state (and ledgers) on their
actor; a dead actor takes its sites out; resources are checked. One Ray session serves the whole module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from confide import job_plan, serde
from confide.cli import app
from confide.config import JobConfig, parse_job
from confide.dashboard.live import Dashboard
from confide.errors import ConfigError
from confide.experiment import run_job
from confide.kinds.tables.synthetic import synthetic_binary_table
from confide.records import TrainIns, TrainRes
from confide.report.progress import ProgressDisplay
from confide.server.sampling import RATE_KEY, sample_sites
from confide.sim_ray import RayFederation
from confide.workloads.registry import make_workload

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -c constraints.txt -e '.[ray]')")


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[None]:
    """One local Ray for every test here (starting it takes seconds); the engine uses it and leaves it running."""
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=100 * 1024 * 1024,
    )
    yield
    ray.shutdown()


def _table(folder: Path, sites: int) -> Path:
    path = folder / "table.csv"
    path.write_text(synthetic_binary_table([f"h{i:02d}" for i in range(sites)], rows=30, features=4, seed=5))
    return path


def _job(
    table: Path,
    engine: str,
    privacy: dict[str, Any] | None = None,
    more: dict[str, Any] | None = None,
    **federation: Any,
) -> JobConfig:
    return parse_job(
        {
            "name": "many",
            "seed": 3,
            "task": {"name": "table", "target": "y", "split_column": None, "batch_size": 8, "lr": 0.05},
            "data": {"root": str(table)},
            "federation": {"rounds": 3, "local_steps": 3, **federation},
            "finetune": {"steps": 0},
            "simulation": {"engine": engine, "actors": 2},
            "report": {"plots": False},
            "privacy": privacy or {},
            **(more or {}),
        }
    )


def _federated(job: JobConfig) -> Any:
    result = run_job(job, ProgressDisplay(enabled=False))
    return result, next(run for run in result.runs if run.kind == "federated")


def test_the_same_job_ends_with_the_same_model_on_both_engines(tmp_path: Path) -> None:
    table = _table(tmp_path, sites=6)
    # sampled sites, and state each site keeps between rounds (SCAFFOLD's control variate)
    local, local_run = _federated(_job(table, "inprocess", strategy="scaffold", fraction=0.5))
    remote, remote_run = _federated(_job(table, "ray", strategy="scaffold", fraction=0.5))

    # bit for bit: the transport hands the updates to the strategy in the same order as in-process, and each site
    # trains in its actor exactly as in-process (SCAFFOLD's control variates stay with the site between rounds)
    assert local_run.arrays.names() == remote_run.arrays.names()
    for name, value in local_run.arrays.items():
        assert np.array_equal(value, remote_run.arrays[name]), name
    assert remote.cross[remote_run.name] == local.cross[local_run.name]
    assert remote_run.curve == local_run.curve
    assert remote.sizes == local.sizes


def test_local_only_and_fine_tuned_models_are_the_in_process_engines_and_fill_the_matrix(tmp_path: Path) -> None:
    table = _table(tmp_path, sites=4)
    both: dict[str, Any] = {"compare": ["local", "pooled"], "finetune": {"steps": 2}}
    local = run_job(_job(table, "inprocess", more=both), ProgressDisplay(enabled=False))
    remote = run_job(_job(table, "ray", more=both), ProgressDisplay(enabled=False))

    sites = [f"h{i:02d}" for i in range(4)]
    expected = [f"local:{s}" for s in sites] + ["fedavg"] + [f"finetuned:{s}" for s in sites]
    assert [run.name for run in remote.runs] == expected  # in-process has pooled too; Ray says it is not run
    assert [run.name for run in local.runs if run.name != "pooled"] == expected
    by_name = {run.name: run for run in local.runs}
    for run in remote.runs:
        mine = by_name[run.name]
        assert run.arrays is not None and mine.arrays is not None
        for name, value in mine.arrays.items():  # trained in the site's actor exactly as in-process
            assert np.array_equal(value, run.arrays[name]), (run.name, name)
        assert remote.cross[run.name] == local.cross[run.name]  # a full row: scored at every site
    assert [p["loss"] for p in remote.runs[0].curve] == [p["loss"] for p in by_name["local:h00"].curve]
    assert "not run on this engine: the pooled baseline" in remote.description


def test_an_actor_that_dies_takes_its_sites_out_of_the_federation(tmp_path: Path) -> None:
    job = _job(_table(tmp_path, sites=4), "ray")
    workload = make_workload(job.task)
    names = workload.simulated_sites(job.data, lambda line: None)
    instruction = serde.encode(TrainIns(round=1, arrays=job_plan.initial_global(job, workload), config={"lr": 0.1}))

    with RayFederation(job, names) as federation:
        transport = federation.transport()
        ray.kill(federation.hosts[1])
        replies = list(transport.exchange(dict.fromkeys(names, instruction)))
        still = transport.sites()

    on_first = [site for site in names if federation.placement[site] == 0]
    assert [r.site for r in replies] == names  # in the order asked, whatever finished first
    for reply in replies:
        if reply.site in on_first:
            assert reply.payload is not None and isinstance(serde.decode(reply.payload), TrainRes)
        else:
            assert reply.payload is None and "stopped" in str(reply.error)
    assert still == on_first


def test_a_pool_that_does_not_fit_is_refused_and_the_callers_ray_keeps_running(tmp_path: Path) -> None:
    job = _job(_table(tmp_path, sites=4), "ray")
    job = job.model_copy(update={"simulation": job.simulation.model_copy(update={"cpus_per_actor": 3.0})})

    with pytest.raises(ConfigError, match=r"simulation\.cpus_per_actor 3 for 2 actor\(s\) needs 6 CPU"):
        RayFederation(job, ["h00", "h01"]).__enter__()

    assert ray.is_initialized()


def test_confide_simulate_on_ray_reports_many_sites_and_every_site_s_ledger(tmp_path: Path) -> None:
    table = _table(tmp_path, sites=60)
    job_file = tmp_path / "job.yaml"
    document = {
        "name": "sixty",
        "seed": 4,
        "task": {"name": "table", "target": "y", "split_column": None},
        "data": {"root": str(table)},
        "federation": {"rounds": 2, "local_steps": 2, "fraction": 0.1},
        "privacy": {"filters": [{"type": "gaussian", "clip": 1.0, "noise_multiplier": 2.0}]},
        "compare": ["local"],
        "report": {"out": str(tmp_path / "out")},
    }
    job_file.write_text(yaml.safe_dump(document))

    result = CliRunner().invoke(app, ["simulate", str(job_file), "--engine", "ray", "--actors", "2"])

    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "60 sites on 2 actor(s), a fraction 0.1 of them training each round" in text
    above = "(above 50 sites)"
    assert f"not run on this engine: the local-only baselines {above} and fine-tuning at each site {above}" in text
    assert "per-site plots left out above 50 sites" in text
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["cross_site"]["fedavg"]) == 61  # every site's own test split, and their mean
    assert [point["round"] for point in metrics["models"]["fedavg"]["curve"]] == [1.0, 2.0]
    assert (out / "report.md").is_file()
    assert (out / "learning_curves.png").is_file() and not (out / "per_site.png").exists()
    assert "fine-tuned models add" not in (out / "report.md").read_text()  # none was fine-tuned on this engine
    # each site's ledger was kept in its actor and came back: it charged the rounds the site was sampled in, and
    # noted the rate it was told without counting it
    sites = sorted(metrics["sites"])
    for site in sites:
        entries = json.loads((out / "privacy" / f"{site}.json").read_text())["entries"]
        sampled = [r for r in (1, 2) if site in sample_sites(sites, 0.1, 1, seed=4, round=r)]
        assert [entry["round"] for entry in entries] == sampled
        assert all(entry["params"][RATE_KEY] == 0.1 for entry in entries)
        assert all(entry["params"]["site_sampling_amplification"] == "none" for entry in entries)


def test_the_live_dashboard_follows_a_job_on_the_ray_engine(tmp_path: Path) -> None:
    privacy = {"filters": [{"type": "gaussian", "clip": 1.0, "noise_multiplier": 2.0}]}
    job = _job(_table(tmp_path, sites=6), "ray", privacy=privacy, fraction=0.5)

    with Dashboard(job, mode="simulation", token="t" * 32) as dashboard:
        result = run_job(job, ProgressDisplay(enabled=False), dashboard)
        snap = dashboard.snapshot()

    fed = next(run for run in result.runs if run.kind == "federated")
    assert [(r.round, r.status, len(r.accepted)) for r in snap.rounds] == [
        (1, "closed", 3),
        (2, "closed", 3),
        (3, "closed", 3),
    ]
    assert snap.status == "done: every round closed" and not snap.sites[0].connected  # the run is over
    assert sum(s.accepted for s in snap.sites) == 9 and {s.name for s in snap.sites} <= set(result.sizes)
    # the ledgers live in the actors: the page shows what each update reported, the same totals the ledgers hold
    assert snap.privacy.source == "reported" and "Ray actors" in snap.privacy.note
    for view in snap.privacy.ledgers:
        assert [(p.round, p.epsilon) for p in view.points] == [
            (e.round, pytest.approx(e.epsilon_total)) for e in fed.ledgers[view.site].entries
        ]
    (auc,) = [c for c in snap.curves if c.name.startswith("test auc")]  # no training metric under DP
    assert auc.rounds == (1, 2, 3) and auc.values == tuple(point["auc"] for point in fed.curve)
