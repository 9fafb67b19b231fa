"""A MedMNIST file as image site folders, and the real BreastMNIST through the image task with its official split."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from confide.audit.threads import one_thread
from confide.config import parse_job
from confide.errors import DataError
from confide.experiment import run_job
from confide.kinds.images.dataset import ImageSet
from confide.kinds.images.medmnist import write_medmnist_sites
from confide.report.progress import ProgressDisplay

BREAST = ("malignant", "benign")  # BreastMNIST: label 0 is malignant, 1 normal or benign


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_medmnist_file_becomes_sites_that_keep_the_official_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        f"{split}_{kind}": values
        for split, n in (("train", 10), ("val", 4), ("test", 6))
        for kind, values in (
            ("images", rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)),
            ("labels", rng.integers(0, 2, size=(n, 1), dtype=np.uint8)),
        )
    }
    np.savez(tmp_path / "tiny.npz", **arrays)  # type: ignore[arg-type]

    folders = write_medmnist_sites(tmp_path / "tiny.npz", tmp_path / "sites", sites=3, names=BREAST)

    rows = [row for folder in folders for row in _rows(folder)]
    assert [f.name for f in folders] == ["site-1", "site-2", "site-3"]
    assert sorted((r["split"], r["file"]) for r in rows if r["split"] == "test") == [
        ("test", f"test_{i:05d}.png") for i in range(6)
    ]
    assert len(rows) == 20 and {r["label"] for r in rows} <= set(BREAST)
    assert all(sum(r["split"] == "test" for r in _rows(f)) == 2 for f in folders)  # each site its share
    label_of = {r["file"]: r["label"] for r in rows}
    assert label_of["test_00003.png"] == BREAST[int(arrays["test_labels"][3, 0])]


def test_a_multi_label_medmnist_file_is_refused(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "chest.npz",
        train_images=np.zeros((2, 8, 8), np.uint8),
        train_labels=np.zeros((2, 14), np.uint8),
    )

    with pytest.raises(DataError, match="multi-label"):
        write_medmnist_sites(tmp_path / "chest.npz", tmp_path / "out")


def test_breastmnist_federates_on_its_official_test_split(shared_data: Path, tmp_path: Path) -> None:
    npz = shared_data / "breastmnist" / "breastmnist.npz"
    if not npz.is_file():
        pytest.skip(f"BreastMNIST not found at {npz}")
    folders = write_medmnist_sites(npz, tmp_path / "breast", sites=3, names=BREAST)
    job = parse_job(
        {
            "name": "breastmnist",
            "task": {
                "name": "image_classification",
                "classes": list(BREAST),
                "image_size": 28,
                "width": 8,
                "lr": 0.003,
            },
            "data": {"root": str(tmp_path / "breast")},
            "federation": {"rounds": 10, "local_steps": 10, "min_sites": 3},
            "finetune": {"steps": 0},
            "report": {"out": str(tmp_path / "report"), "plots": False},
        }
    )

    result = run_job(job, ProgressDisplay(enabled=False))

    for site, folder in zip(result.sites, folders, strict=True):
        official = sorted(r["file"] for r in _rows(folder) if r["split"] == "test")
        assert isinstance(site.test, ImageSet) and sorted(site.test.files) == official
        assert any("val images set aside" in note for note in site.notes)
    assert sum(len(s.test) for s in result.sites) == 156 and sum(len(s.train) for s in result.sites) == 546
    federated = result.cross["fedavg"]["all"]
    assert federated["auc"] > 0.7  # ultrasound at 28 px with mild augmentation: malignant vs benign is learnt
