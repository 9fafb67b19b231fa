"""The report's predictions section on a classification job: a confusion matrix per model, ROC curves, and each
model's bootstrap interval per site, the same value the cross-site table shows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from confide.config import parse_job
from confide.experiment import run_job
from confide.report.bootstrap import Interval
from confide.report.predictions import MATRIX_SITES, interval_rows, prediction_section
from confide.report.progress import ProgressDisplay
from confide.report.writer import write_report


def _table(path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = ["site,x1,x2,label"]
    for site in ("north", "south"):
        for _ in range(40):
            x1, x2 = rng.normal(size=2)
            lines.append(f"{site},{x1:.4f},{x2:.4f},{int(x1 - x2 + 0.3 * rng.normal() > 0)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("binary")
    job = parse_job(
        {
            "seed": 0,
            "task": {"name": "table", "target": "label", "lr": 0.1},
            "data": {"root": str(_table(root / "rows.csv")), "test_fraction": 0.3},
            "federation": {"rounds": 3, "local_steps": 5, "min_sites": 2},
            "finetune": {"steps": 0},
        }
    )
    write_report(run_job(job, ProgressDisplay(enabled=False)), root / "report")
    return root / "report"


def test_a_classification_report_draws_confusion_matrices_and_roc_curves(report: Path) -> None:
    markdown = (report / "report.md").read_text()

    assert (report / "confusion_matrices.png").stat().st_size > 1000
    assert (report / "roc_curves.png").stat().st_size > 1000
    assert "![confusion matrices" in markdown and "![ROC curves" in markdown


def test_each_models_interval_holds_the_cross_site_value_and_n(report: Path) -> None:
    metrics = json.loads((report / "metrics.json").read_text())

    for model, per_site in metrics["bootstrap"].items():
        for site, shown in per_site.items():
            assert shown["value"] == pytest.approx(metrics["cross_site"][model][site]["accuracy"])
            assert shown["n"] == metrics["cross_site"][model][site]["cases"] == 12
            assert shown["low"] <= shown["value"] <= shown["high"] and shown["resamples"] == 1000


def test_many_sites_are_listed_one_row_per_model_and_site() -> None:
    cell = Interval(0.7, 0.5, 0.9, 15, 1000, 1000)
    sites = {f"s{k}": cell for k in range(MATRIX_SITES + 1)}

    header, body = interval_rows({"fedavg": sites})
    few_header, few_body = interval_rows({"fedavg": {"a": cell}})

    assert header == ["model", "site", "n", "value [95 % interval]"] and len(body) == MATRIX_SITES + 1
    assert few_header == ["model", "a (n 15)"] and few_body == [["fedavg", "0.700 [0.500, 0.900]"]]


def test_a_result_without_outputs_says_why_there_are_no_pictures(report: Path) -> None:
    from confide.experiment import JobResult

    bare = JobResult(
        job=parse_job({"data": {"root": "."}}), sites=(), sizes={}, runs=(), cross={}, seconds={}, metric="m",
        metric_keys=("m",), description="",
    )  # fmt: skip

    section = prediction_section(bare, report)

    assert "kept no workload" in section.section.html and section.intervals == {}
