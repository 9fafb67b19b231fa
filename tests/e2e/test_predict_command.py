"""Done when: `confide predict` runs on the demo's final model and a phantom case and writes a NIfTI that nibabel
reads with the input's affine and shape, labels in BraTS convention; the demo's report shows the prediction
overlays and each model's bootstrap interval; `confide export` writes an ONNX file checked against torch; a table
model predicts new rows with a site's kept statistics; bad inputs get clear errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from confide import serde
from confide.cli import app
from confide.kinds.tables.synthetic_survival import synthetic_survival
from confide.model_file import read_card, read_model

pytestmark = pytest.mark.slow
DEMO = ["--sites", "2", "--cases", "4", "--roi", "16", "--rounds", "2", "--local-steps", "2", "--filters", "4"]


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def _plain(text: str) -> str:
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    result = _run("demo", "--out", out, *DEMO)
    assert result.exit_code == 0, result.output
    return out


def _case(demo: Path) -> Path:
    return sorted((demo / "data" / "site-1").iterdir())[0]


def test_predict_writes_a_segmentation_in_the_input_space_from_the_models_own_description(
    demo: Path, tmp_path: Path
) -> None:
    case = _case(demo)
    out = tmp_path / "seg.nii.gz"

    result = _run("predict", demo / "models" / "fedavg.safetensors", case, out)

    assert result.exit_code == 0, result.output
    written: Any = nib.load(str(out))
    t1c: Any = nib.load(str(next(case.glob("*_t1ce.nii.gz"))))
    assert written.shape == t1c.shape and np.allclose(written.affine, t1c.affine)
    assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= {0, 1, 2, 4}
    assert "BraTS 2018-2021 labels" in _plain(result.output)


def test_predict_takes_the_job_file_too(demo: Path, tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "demo", "task": {"roi": [16, 16, 16], "init_filters": 4},
                                   "data": {"root": str(demo / "data")}}))  # fmt: skip

    result = _run("predict", demo / "models" / "local_site-2.safetensors", "--job", job, _case(demo), tmp_path / "o")

    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / f"{_case(demo).name}.nii.gz").is_file()


def test_every_final_model_file_describes_itself(demo: Path) -> None:
    arrays, card = read_model(demo / "models" / "fedavg.safetensors")

    assert card is not None and len(arrays) > 0
    assert (card.job, card.model, card.kind, card.metric) == ("demo", "fedavg", "brain_tumor", "dice_mean")
    assert card.task["roi"] == [16, 16, 16] and card.task["init_filters"] == 4
    assert card.classes == ("WT", "TC", "ET") and card.example_shape == (4, 16, 16, 16)
    assert card.confide_version and card.created.endswith("+00:00")
    assert read_card(demo / "models" / "finetuned_site-1.safetensors").model == "finetuned:site-1"  # type: ignore[union-attr]


def test_the_demo_report_shows_the_overlays_and_each_models_interval_beside_n(demo: Path) -> None:
    metrics = json.loads((demo / "metrics.json").read_text())
    markdown = (demo / "report.md").read_text()
    page = (demo / "report.html").read_text()

    for model, per_site in metrics["cross_site"].items():
        for site in ("site-1", "site-2"):
            shown = metrics["bootstrap"][model][site]
            assert shown["value"] == pytest.approx(per_site[site]["dice_mean"])
            assert shown["n"] == per_site[site]["cases"] and shown["metric"] == "dice_mean"
    assert (demo / "predictions_site-1.png").stat().st_size > 1000
    assert "![site-1: 1 test case(s), fedavg and local:" in markdown
    assert "## Predictions" in markdown and "(n 1)" in markdown
    assert "<h2>Predictions</h2>" in page and "predictions_site-1.png" not in page.split("<h2>Predictions</h2>")[1]


def test_bad_inputs_are_refused_with_errors_that_name_them(demo: Path, tmp_path: Path) -> None:
    model = demo / "models" / "fedavg.safetensors"
    partial = tmp_path / "partial"
    shutil.copytree(_case(demo), partial)
    next(partial.glob("*_flair.nii.gz")).unlink()
    not_a_model = tmp_path / "notes.safetensors"
    not_a_model.write_text("hello")
    bare = serde.save_arrays(tmp_path / "bare.safetensors", read_model(model)[0])
    table_job = tmp_path / "table.yaml"
    table_job.write_text(yaml.safe_dump({"task": {"name": "table", "target": "y"}, "data": {"root": "t.csv"}}))

    missing = _run("predict", model, partial, tmp_path / "x.nii.gz")
    wrong_file = _run("predict", not_a_model, _case(demo), tmp_path / "x.nii.gz")
    undescribed = _run("predict", bare, _case(demo), tmp_path / "x.nii.gz")
    other_kind = _run("predict", model, "--job", table_job, _case(demo), tmp_path / "x.csv")

    assert missing.exit_code == 2 and "missing modality 'flair'" in _plain(missing.output)
    assert wrong_file.exit_code == 2 and "not a Confide model file" in _plain(wrong_file.output)
    assert undescribed.exit_code == 2 and "--job" in _plain(undescribed.output)
    assert other_kind.exit_code == 2 and "is a brain_tumor model" in _plain(other_kind.output)
    assert not (tmp_path / "x.nii.gz").exists()


def test_export_writes_an_onnx_file_that_onnxruntime_runs_as_torch_does(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "fedavg.onnx"

    result = _run("export", demo / "models" / "fedavg.safetensors", "--onnx", out)

    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 10_000 and "onnxruntime matches torch" in _plain(result.output)


def test_a_table_model_predicts_new_rows_with_a_sites_statistics_from_the_report(tmp_path: Path) -> None:
    table = tmp_path / "survival.csv"
    table.write_text(synthetic_survival(2, 60, seed=0))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "risk", "seed": 0,
        "task": {"name": "table", "target": "time", "kind": "survival", "event": "event", "drop": ["patient"]},
        "data": {"root": str(table), "test_fraction": 0.3},
        "federation": {"rounds": 5, "local_steps": 5, "min_sites": 2}, "finetune": {"steps": 0},
        "report": {"out": str(tmp_path / "report")},
    }))  # fmt: skip
    assert _run("simulate", job).exit_code == 0
    report = tmp_path / "report"
    new = tmp_path / "new.csv"
    new.write_text("patient,age,marker,noise,stage\nq1,70,0.5,0.1,II\nq2,45,1.0,0.0,I\n")

    without = _run("predict", report / "models" / "fedavg.safetensors", new, tmp_path / "r.csv")
    result = _run(
        "predict", report / "models" / "fedavg.safetensors", new, tmp_path / "r.csv",
        "--statistics", report / "models" / "preprocessing" / "site-1.json",
    )  # fmt: skip

    assert without.exit_code == 2 and "--statistics" in _plain(without.output)
    assert result.exit_code == 0, result.output
    risks = (tmp_path / "r.csv").read_text().splitlines()
    assert risks[0].endswith(",risk,problem") and len(risks) == 3
    assert float(risks[1].split(",")[-2]) > float(risks[2].split(",")[-2])  # older, later stage: higher risk
    assert (report / "kaplan_meier.png").stat().st_size > 1000
