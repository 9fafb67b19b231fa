"""The image task end to end: a generated colour set with a given split through run_job, the job's fields, the
networks, DP-SGD, and a deployed server without classes."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from confide.audit.threads import one_thread
from confide.config import parse_job
from confide.errors import ConfigError, TaskError
from confide.experiment import run_job
from confide.kinds.images.config import ImageTaskConfig
from confide.kinds.images.dataset import ImageSet
from confide.kinds.images.model import build_network
from confide.privacy.config import DpSgdSpec
from confide.records import Arrays
from confide.report.progress import ProgressDisplay
from confide.workloads.registry import make_workload

QUIET = ProgressDisplay(enabled=False)
GRADES = ["0", "1", "2", "3", "4"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _job(root: Path, out: Path, **task: Any) -> dict[str, Any]:
    return {
        "name": "grades",
        "task": {
            "name": "image_classification",
            "ordinal": True,
            "channels": 3,
            "image_size": 32,
            "width": 8,
            "lr": 0.003,
            "synthetic": {"sites": 2, "patients": 24, "size": 64},
            **task,
        },
        "data": {"root": str(root)},
        "federation": {"rounds": 15, "local_steps": 10, "min_sites": 2},
        "finetune": {"steps": 0},
        "report": {"out": str(out), "plots": False},
    }


def _given_test_files(folder: Path) -> list[str]:
    with open(folder / "labels.csv", newline="") as handle:
        return sorted(row["file"] for row in csv.DictReader(handle) if row["split"] == "test")


def test_a_generated_colour_set_with_a_given_split_federates_and_learns_the_grades(tmp_path: Path) -> None:
    job = parse_job(_job(tmp_path / "grades", tmp_path / "report"))

    result = run_job(job, QUIET)

    assert result.metric == "kappa" and result.metric_keys[:2] == ("kappa", "balanced_accuracy")
    assert [s.name for s in result.sites] == ["site-1", "site-2"]
    for site in result.sites:  # the split column of the generated labels.csv is used as given
        assert sorted(site.test.files) == _given_test_files(tmp_path / "grades" / site.name)
        assert site.train.images.shape[1:] == (3, 32, 32)
    federated = result.cross["fedavg"]["all"]
    # grades learnt from lesions across two cameras in 150 local steps (job seeds 0, 1, 2 gave 0.75, 0.78, 0.75)
    assert federated["kappa"] > 0.3
    assert 0.65 < federated["auc"] <= 1.0
    assert "5 classes" in result.description and "ordinal" in result.description


def test_a_wrong_field_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"task\.widht: Extra inputs are not permitted"):
        parse_job(_job(tmp_path, tmp_path, widht=8))
    with pytest.raises(ConfigError, match=r"task\.channels: .*(got 2)"):
        parse_job(_job(tmp_path, tmp_path, channels=2))
    with pytest.raises(ConfigError, match=r"task\.classes: .*more than once"):
        parse_job(_job(tmp_path, tmp_path, classes=["mild", "Mild"], synthetic=None))
    with pytest.raises(ConfigError, match="densenet121 divides the side by 32"):
        parse_job(_job(tmp_path, tmp_path, model="densenet121", image_size=28))


def test_a_deployed_server_without_classes_is_told_to_give_them() -> None:
    workload = make_workload(ImageTaskConfig(image_size=16))

    with pytest.raises(ConfigError, match=r"task\.classes is not set: the server"):
        workload.initial(0)


@pytest.mark.parametrize("model", ["resnet18", "densenet121"])
@pytest.mark.parametrize("norm", ["group", "instance"])
def test_the_monai_networks_take_the_jobs_channels_classes_and_norm(model: str, norm: str) -> None:
    config = ImageTaskConfig(classes=("a", "b", "c"), channels=3, image_size=32, model=model, width=8, norm=norm)  # type: ignore[arg-type]

    network = build_network(config, 3)
    out = network(torch.rand(2, 3, 32, 32))

    assert out.shape == (2, 3)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())
    norms = [m for m in network.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(
        m.num_groups == (m.num_channels if norm == "instance" else gcd(m.num_channels, 8)) for m in norms
    )


def _blobs(n: int, seed: int) -> ImageSet:
    """Half the images hold a bright square (class 1) on noise."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.3, 0.05, size=(n, 1, 16, 16)).clip(0, 1)
    labels = np.arange(n) % 2
    for i in np.flatnonzero(labels):
        y, x = rng.integers(2, 9, size=2)
        images[i, 0, y : y + 5, x : x + 5] = 0.9
    return ImageSet.from_arrays(list(images.astype(np.float32)), labels.tolist(), [f"{i}.png" for i in range(n)])


@pytest.mark.parametrize("model", ["small_cnn", "resnet18"])
def test_dp_sgd_trains_with_group_norm(model: str) -> None:
    config = ImageTaskConfig(classes=("a", "b"), image_size=16, model=model, width=4, norm="group", lr=0.01)  # type: ignore[arg-type]
    workload = make_workload(config)
    dp = DpSgdSpec(noise_multiplier=1.0, clip=1.0)
    task = workload.task(_blobs(32, 0), _blobs(16, 1), site="s", seed=0, dp_sgd=dp)
    start = workload.initial(0)

    result = task.train(start, {"local_steps": 3, "batch_size": 8}, round=1)

    assert isinstance(result.update, Arrays)
    update = np.concatenate([v.ravel() for v in result.update.values()])
    assert np.isfinite(update).all() and np.abs(update).max() > 0
    (spend,) = task.privacy_spend({"local_steps": 3, "batch_size": 8})
    assert spend.noise_multiplier == 1.0 and spend.steps == 3


def test_dp_sgd_refuses_batch_norm_with_the_reason() -> None:
    workload = make_workload(ImageTaskConfig(classes=("a", "b"), image_size=16, width=4, norm="batch"))

    with pytest.raises(TaskError, match="BatchNorm"):
        workload.task(_blobs(8, 0), None, site="s", seed=0, dp_sgd=DpSgdSpec(noise_multiplier=1.0, clip=1.0))


def test_the_data_images_command_writes_site_folders_with_split_and_patients(tmp_path: Path) -> None:
    from confide.cli import app

    result = CliRunner().invoke(
        app, ["data", "images", "--out", str(tmp_path / "g"), "--sites", "2", "--patients", "4", "--size", "32"]
    )

    assert result.exit_code == 0, result.output
    with open(tmp_path / "g" / "site-2" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and {r["split"] for r in rows} <= {"train", "test"}
    assert all(r["label"] in GRADES and (tmp_path / "g" / "site-2" / r["file"]).is_file() for r in rows)
    by_patient: dict[str, set[str]] = {}
    for r in rows:
        by_patient.setdefault(r["patient"], set()).add(r["split"])
    assert all(len(splits) == 1 for splits in by_patient.values())  # a patient's two eyes on one side


def test_a_round_of_augmented_training_reproduces_bit_for_bit() -> None:
    workload = make_workload(ImageTaskConfig(classes=("a", "b"), image_size=16, width=4, augment=True))

    def one_round() -> list[np.ndarray]:
        task = workload.task(_blobs(32, 0), None, site="s", seed=3, dp_sgd=None)
        result = task.train(workload.initial(3), {"local_steps": 3, "batch_size": 8}, round=2)
        assert isinstance(result.update, Arrays)
        return list(result.update.values())

    first, again = one_round(), one_round()

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(np.abs(a).max() > 0 for a in first)
