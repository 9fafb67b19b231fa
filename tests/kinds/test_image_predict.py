"""An image classifier used after the job: a folder of new images to a CSV of class probabilities, and its outputs
on a test split for the report."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from confide.api import Place, PredictRequest
from confide.errors import DataError
from confide.kinds.images.config import ImageTaskConfig
from confide.kinds.images.predict import model_io, outputs, predict, preprocessing
from confide.kinds.images.site import read_site
from confide.workloads.kind import KindWorkload
from confide.workloads.registry import make_workload
from tests.kinds.images_helpers import colour_image, grey_png, write_labels

CONFIG = ImageTaskConfig(classes=("benign", "malignant"), image_size=16, model="small_cnn", width=4)


def _model(config: ImageTaskConfig = CONFIG) -> tuple[KindWorkload, torch.nn.Module]:
    workload = make_workload(config)
    assert isinstance(workload, KindWorkload)
    torch.manual_seed(0)
    return workload, workload.network().eval()


def test_a_folder_of_images_gets_a_row_of_class_probabilities_per_image(tmp_path: Path) -> None:
    grey_png(tmp_path / "new" / "a.png", 40)
    colour_image(tmp_path / "new" / "deeper" / "b.jpg")
    (tmp_path / "new" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "new" / "notes.txt").write_text("not an image file")
    workload, model = _model()
    out = tmp_path / "probabilities.csv"

    done = predict(workload.fields, model, PredictRequest(tmp_path / "new", out))

    with open(out, newline="") as handle:
        rows = {r["file"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"a.png", "broken.png", "deeper/b.jpg"}
    assert list(next(iter(rows.values())))[:4] == ["file", "benign", "malignant", "predicted"]
    for name in ("a.png", "deeper/b.jpg"):
        p = [float(rows[name]["benign"]), float(rows[name]["malignant"])]
        assert sum(p) == pytest.approx(1.0, abs=1e-5)
        assert rows[name]["predicted"] == CONFIG.classes[int(np.argmax(p))]  # type: ignore[index]
    assert rows["broken.png"]["benign"] == "" and rows["broken.png"]["problem"]
    assert done.count == 2 and any("broken.png" in note for note in done.notes)


def test_a_folder_without_a_readable_image_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"\x89PNG broken")
    workload, model = _model()

    with pytest.raises(DataError, match="no image file"):
        predict(workload.fields, model, PredictRequest(tmp_path / "empty", tmp_path / "out.csv"))
    with pytest.raises(DataError, match="could be read"):
        predict(workload.fields, model, PredictRequest(tmp_path / "bad", tmp_path / "out.csv"))


def test_outputs_on_a_test_split_score_as_evaluate_does(tmp_path: Path) -> None:
    site = tmp_path / "site"
    rows = []
    for k in range(12):
        grey_png(site / f"{k}.png", 30 + 15 * k)
        rows.append((f"{k}.png", "malignant" if k % 2 else "benign"))
    write_labels(site, rows)
    workload, model = _model()
    test = read_site(CONFIG, Place(site, "site", seed=0, test_fraction=0.5)).test

    got = outputs(CONFIG, model, test)

    with torch.no_grad():
        scored = workload.kind.evaluate(CONFIG, model, test)
    assert got.n == len(test)  # type: ignore[arg-type]
    assert got.headline(np.arange(got.n)) == pytest.approx(scored["balanced_accuracy"])


def test_the_model_file_names_the_classes_and_the_site_keeps_no_statistic() -> None:
    io = model_io(CONFIG)
    kept = preprocessing(CONFIG, Place(Path("."), "site", seed=0, test_fraction=0.25))

    assert io.classes == ("benign", "malignant") and io.example_shape == (1, 16, 16)
    assert kept.statistics == {} and "no site statistic" in kept.description
