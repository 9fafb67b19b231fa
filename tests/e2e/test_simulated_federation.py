"""End to end: phantoms on disk -> BraTS reader -> preprocessing -> simulated FedAvg -> report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from confide.cli import app
from confide.config import parse_job
from confide.experiment import run_job
from confide.kinds.brain_tumor.model import initial_arrays
from confide.report.progress import ProgressDisplay

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from confide.kinds.brain_tumor.phantom_writer import write_federation

    root = tmp_path_factory.mktemp("phantoms")
    write_federation(root, sites=3, cases=4, seed=0)
    return root


def test_three_site_federation_changes_the_model_and_lowers_the_loss(phantom_root: Path) -> None:
    job = parse_job(
        {
            "seed": 0,
            "task": {"roi": [32, 32, 32], "init_filters": 8, "lr": 0.003},
            "data": {"root": str(phantom_root), "test_fraction": 0.25},
            "federation": {"rounds": 3, "local_steps": 4, "min_sites": 3},
        }
    )

    result = run_job(job, ProgressDisplay(enabled=False))

    run = next(r for r in result.runs if r.kind == "federated")
    assert run.name == result.federated and run.sites == ("site-1", "site-2", "site-3")
    assert run.arrays is not None and not run.arrays.allclose(initial_arrays(job.task, job.seed))
    losses = [p["loss"] for p in run.curve]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert set(result.cross["fedavg"]) == {"site-1", "site-2", "site-3", "all"}
    assert all(len(s.train) == 3 and len(s.test) == 1 for s in result.sites)
    # every site fine-tunes the federated model; the fine-tuned models join the cross-site matrix
    tuned = [r for r in result.runs if r.kind == "finetuned"]
    assert [r.name for r in tuned] == ["finetuned:site-1", "finetuned:site-2", "finetuned:site-3"]
    assert all(r.arrays is not None and not r.arrays.allclose(run.arrays) for r in tuned)
    assert set(result.cross) == {"fedavg", *(r.name for r in tuned)}
    all_sites = result.cross["fedavg"]["all"]
    per_site = [result.cross["fedavg"][s]["dice_mean"] for s in ("site-1", "site-2", "site-3")]
    assert all_sites["dice_mean"] == pytest.approx(sum(per_site) / 3)


def test_demo_command_prints_the_table_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--sites", "2", "--cases", "4", "--roi", "16", "--rounds", "2"]

    result = CliRunner().invoke(app, [*args, "--local-steps", "2", "--filters", "4"])

    assert result.exit_code == 0, result.output
    for model in ("local:site-1", "local:site-2", "pooled", "fedavg", "finetuned:site-1"):
        assert model in result.output
    assert "what federation gained each site" in result.output
    for name in (
        "metrics.json",
        "report.md",
        "report.html",
        "learning_curves.png",
        "cross_site_heatmap.png",
        "gains.png",
    ):
        assert (out / name).stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    tuned = {"finetuned:site-1", "finetuned:site-2"}
    assert set(metrics["cross_site"]) == {"local:site-1", "local:site-2", "pooled", "fedavg", *tuned}
    gains = metrics["gains"]["site-1"]
    assert gains["gain federated"] == pytest.approx(gains["federated"] - gains["local"])
    assert "What federation gained each site" in (out / "report.md").read_text()
    assert (out / "models" / "fedavg.safetensors").exists()


def test_simulate_names_a_bad_field_without_a_traceback(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("data: {root: x}\nfederation: {rounds: -3}\n")

    result = CliRunner().invoke(app, ["simulate", str(job)])

    assert result.exit_code == 2
    assert "federation.rounds" in result.output and "Traceback" not in result.output


def test_simulate_with_missing_data_folder_is_a_clear_error(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(f"data: {{root: {tmp_path / 'nowhere'}}}\n")

    result = CliRunner().invoke(app, ["simulate", str(job)])

    assert result.exit_code == 2 and "does not exist" in result.output
