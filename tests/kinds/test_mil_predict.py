"""A MIL model used after the job: ``confide predict`` on a simulated job's final model file and a folder of slide
feature files gives class probabilities that match the job's own evaluation, names each slide it cannot read, lists
each slide's top tiles; the job's report has the confusion matrices, ROC curves and bootstrap intervals."""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from typer.testing import CliRunner

from confide.api import Place, PredictRequest
from confide.cli import app
from confide.config import parse_job
from confide.experiment import run_job
from confide.kinds.mil.config import MilTaskConfig
from confide.kinds.mil.metrics import slide_metrics
from confide.kinds.mil.model import pack, tile_scores
from confide.kinds.mil.predict import (
    TOP_TILES,
    headline_scores,
    model_io,
    predict,
    preprocessing,
    probabilities,
)
from confide.kinds.mil.slides import SlideSet, read_bag
from confide.model_file import read_card
from confide.report.progress import ProgressDisplay
from confide.report.writer import write_report
from confide.workloads.kind import KindWorkload
from confide.workloads.registry import make_workload
from confide.workloads.use import load_for_use

SITES, SLIDES, DIM, TEST_FRACTION = 2, 20, 8, 0.4


@dataclass(frozen=True)
class Job:
    slides: Path  # the generated slides: <site>/labels.csv and <site>/features/
    report: Path


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Job:
    root = tmp_path_factory.mktemp("mil")
    synthetic = {"sites": SITES, "slides": SLIDES, "tiles": 24, "dim": DIM, "format": "mixed"}
    config = parse_job(
        {
            "name": "histo-tiny",
            "seed": 0,
            "task": {"name": "mil", "hidden": 8, "lr": 0.01, "batch_size": 4, "max_tiles": 32, "device": "cpu",
                     "synthetic": synthetic},
            "data": {"root": str(root / "slides"), "test_fraction": TEST_FRACTION},
            "federation": {"rounds": 2, "local_steps": 3, "min_sites": SITES},
            "compare": ["local"],
            "finetune": {"steps": 0},
        }
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        write_report(run_job(config, ProgressDisplay(enabled=False)), root / "report")
    finally:
        torch.set_num_threads(threads)
    return Job(root / "slides", root / "report")


def _predict(*args: Any) -> Any:
    return CliRunner().invoke(app, ["predict", *(str(a) for a in args)])


def _plain(text: str) -> str:
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["slide"]: row for row in csv.DictReader(handle)}


def _probs(row: dict[str, str]) -> np.ndarray:
    return np.array([float(row["probability_0"]), float(row["probability_1"])])


def _test_split(job: Job, site: str) -> SlideSet:
    loaded = load_for_use(job.report / "models" / "fedavg.safetensors")
    place = Place(job.slides / site, site, seed=0, test_fraction=TEST_FRACTION)
    test = loaded.workload.kind.read_site(loaded.workload.fields, place).test
    assert isinstance(test, SlideSet)
    return test


def test_predict_gives_each_slide_probabilities_that_sum_to_one_and_score_as_the_job_did(
    job: Job, tmp_path: Path
) -> None:
    model = job.report / "models" / "fedavg.safetensors"
    out = tmp_path / "site-1.csv"
    metrics = json.loads((job.report / "metrics.json").read_text())
    test = _test_split(job, "site-1")

    result = _predict(model, job.slides / "site-1", out)  # a site folder: its features/ are read

    assert result.exit_code == 0, result.output
    assert f"predicted {SLIDES} input(s)" in _plain(result.output)
    rows = _rows(out)
    assert list(next(iter(rows.values()))) == ["slide", "probability_0", "probability_1", "predicted", "problem"]
    with open(job.slides / "site-1" / "labels.csv", newline="") as handle:
        assert set(rows) == {r["slide"] for r in csv.DictReader(handle)}
    for row in rows.values():
        assert _probs(row).sum() == pytest.approx(1.0, abs=2e-6) and row["problem"] == ""
        assert row["predicted"] == str(int(np.argmax(_probs(row))))
    got = np.stack([_probs(rows[bag.slide]) for bag in test.bags])
    loaded = load_for_use(model)
    np.testing.assert_allclose(got, probabilities(loaded.network, test.bags), atol=1e-6)
    scored = slide_metrics(test.labels(), got)
    shown = metrics["cross_site"]["fedavg"]["site-1"]
    assert shown["cases"] == len(test)
    for key in ("balanced_accuracy", "accuracy", "auc"):
        assert scored[key] == pytest.approx(shown[key], abs=1e-6), key


def test_a_slide_that_cannot_be_read_is_named_with_its_reason_and_the_others_are_predicted(
    job: Job, tmp_path: Path
) -> None:
    folder = tmp_path / "new"
    shutil.copytree(job.slides / "site-2" / "features", folder)
    files = sorted(folder.iterdir())
    h5 = next(p for p in files if p.suffix == ".h5")
    h5.write_bytes(b"not an HDF5 file")
    save_file({"features": np.ones((5, DIM + 3), dtype=np.float32)}, str(folder / "wider.safetensors"))
    out = tmp_path / "predictions"
    out.mkdir()

    result = _predict(job.report / "models" / "fedavg.safetensors", folder, out)

    assert result.exit_code == 0, result.output
    rows = _rows(out / "predictions.csv")
    assert len(rows) == len(files) + 1
    broken, wider = rows[h5.stem], rows["wider"]
    assert broken["probability_0"] == broken["predicted"] == "" and broken["problem"].startswith(f"{h5.name}: ")
    assert wider["probability_1"] == "" and "feature dimension 11, the model takes 8" in wider["problem"]
    predicted = [r for r in rows.values() if r["problem"] == ""]
    assert len(predicted) == len(files) - 1 and all(_probs(r).sum() == pytest.approx(1.0, abs=2e-6) for r in predicted)
    assert f"predicted {len(files) - 1} input(s)" in _plain(result.output)
    assert "2 slide(s) not predicted" in _plain(result.output)


def test_each_slides_top_tiles_are_its_highest_attention_weights_with_their_coordinates(
    job: Job, tmp_path: Path
) -> None:
    model = job.report / "models" / "fedavg.safetensors"
    path = next((job.slides / "site-1" / "features").glob("*.safetensors"))
    out = tmp_path / "one.csv"

    result = _predict(model, path, out)  # one file

    assert result.exit_code == 0, result.output
    with open(tmp_path / "one_top_tiles.csv", newline="") as handle:
        tiles = list(csv.DictReader(handle))
    bag = read_bag(path, slide=path.stem, label=0, patient=path.stem)
    weights = tile_scores(load_for_use(model).network, bag)
    best = np.argsort(-weights, kind="stable")[:TOP_TILES]
    assert [int(t["tile"]) for t in tiles] == best.tolist() and [int(t["rank"]) for t in tiles] == list(range(1, 11))
    assert all(t["slide"] == path.stem for t in tiles)
    np.testing.assert_allclose([float(t["score"]) for t in tiles], weights[best], rtol=1e-5)
    assert bag.coords is not None
    assert [[int(t["x"]), int(t["y"])] for t in tiles] == bag.coords[best].tolist()


def test_a_folder_without_a_slide_to_predict_is_refused_by_name(job: Job, tmp_path: Path) -> None:
    model = job.report / "models" / "fedavg.safetensors"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no slides here")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "only.h5").write_bytes(b"truncated")

    empty = _predict(model, tmp_path / "empty", tmp_path / "out.csv")
    bad = _predict(model, tmp_path / "bad", tmp_path / "bad.csv")

    assert empty.exit_code == 2 and not (tmp_path / "out.csv").exists()
    assert "no slide feature file in" in _plain(empty.output) and "features/ folder" in _plain(empty.output)
    assert bad.exit_code == 2 and "no slide at" in _plain(bad.output)
    assert _rows(tmp_path / "bad.csv")["only"]["problem"].startswith("only.h5: ")  # kept: it says why


def test_top_k_pooling_lists_a_slides_tiles_by_their_score_for_the_predicted_class(tmp_path: Path) -> None:
    config = MilTaskConfig(pooling="topk", top_k=2, dim=DIM, hidden=8, device="cpu")
    workload = make_workload(config)
    assert isinstance(workload, KindWorkload)
    torch.manual_seed(0)
    network = workload.network().eval()
    features = np.random.default_rng(0).normal(size=(3, DIM)).astype(np.float32)
    save_file({"features": features}, str(tmp_path / "small.safetensors"))  # fewer tiles than TOP_TILES, no coords

    done = predict(config, network, PredictRequest(tmp_path / "small.safetensors", tmp_path / "out.csv"))

    row = _rows(tmp_path / "out.csv")["small"]
    with open(tmp_path / "out_top_tiles.csv", newline="") as handle:
        tiles = list(csv.DictReader(handle))
    with torch.no_grad():
        scores = network.tile_scores(pack([torch.from_numpy(features)]))[0].numpy()
    chosen = scores[:, int(row["predicted"])] - scores.mean(axis=1)
    assert done.count == 1 and done.files == (tmp_path / "out.csv", tmp_path / "out_top_tiles.csv")
    assert [int(t["tile"]) for t in tiles] == np.argsort(-chosen).tolist()
    np.testing.assert_allclose([float(t["score"]) for t in tiles], np.sort(chosen)[::-1], rtol=1e-5, atol=1e-6)
    assert all(t["x"] == t["y"] == "" for t in tiles)


def test_the_model_file_names_the_classes_and_no_site_statistic_is_kept(job: Job) -> None:
    card = read_card(job.report / "models" / "fedavg.safetensors")
    kept = preprocessing(MilTaskConfig(dim=DIM), Place(job.slides / "site-1", "site-1", seed=0, test_fraction=0.4))

    assert card is not None and card.kind == "mil" and card.classes == ("0", "1") and card.task["dim"] == DIM
    assert model_io(MilTaskConfig(dim=DIM, classes=3)).classes == ("0", "1", "2")
    assert kept.statistics == {} and "no site statistic" in kept.description
    assert not (job.report / "models" / "preprocessing").exists()


def test_the_report_draws_confusion_matrices_roc_curves_and_each_models_interval(job: Job) -> None:
    metrics = json.loads((job.report / "metrics.json").read_text())
    markdown = (job.report / "report.md").read_text()

    assert (job.report / "confusion_matrices.png").stat().st_size > 1000
    assert (job.report / "roc_curves.png").stat().st_size > 1000
    assert "![confusion matrices" in markdown and "![ROC curves" in markdown
    assert "No pictures of predictions" not in markdown
    assert set(metrics["bootstrap"]) == {"fedavg", "local:site-1", "local:site-2"}
    for model, per_site in metrics["bootstrap"].items():
        for site, shown in per_site.items():
            cross = metrics["cross_site"][model][site]
            assert shown["metric"] == "balanced_accuracy" and shown["resamples"] == 1000
            assert shown["value"] == pytest.approx(cross["balanced_accuracy"]) and shown["n"] == cross["cases"] >= 5
            assert shown["low"] <= shown["value"] <= shown["high"]


def test_the_quick_headline_is_the_tasks_balanced_accuracy_and_accuracy_is_a_mean_of_hits() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 30)
    probs = rng.dirichlet(np.ones(3), size=30)
    draws = [rng.integers(0, 30, 30) for _ in range(20)] + [np.array([4, 4, 4])]

    balanced, none = headline_scores("balanced_accuracy", truth, probs)
    accuracy, hits = headline_scores("accuracy", truth, probs)

    assert none is None and hits is not None and hits.shape == (30,)
    for idx in draws:
        expected = slide_metrics(truth[idx], probs[idx])
        assert balanced(idx) == pytest.approx(expected["balanced_accuracy"])
        assert accuracy(idx) == pytest.approx(expected["accuracy"]) == pytest.approx(hits[idx].mean())
