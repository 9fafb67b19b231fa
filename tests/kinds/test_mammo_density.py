from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from confide.errors import DataError, TaskError
from confide.kinds.mammography.config import MammoTaskConfig
from confide.kinds.mammography.density import ImageData, MammoTask, classifier_initial, score_keys
from confide.kinds.mammography.workload import MammoWorkload
from confide.privacy.config import DpSgdSpec
from confide.records import Arrays
from confide.strategies.controls import with_controls

CONFIG = MammoTaskConfig(target="abnormal", image_size=32, width=4, blocks=2, lr=0.02, batch_size=16, augment=True)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: tiny models train many times faster than with two threads on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blobs(n: int, seed: int, size: int = 32) -> ImageData:
    """Half the images hold a bright square (class 1) on noise: a signal a small CNN finds in a few dozen steps."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.3, 0.08, size=(n, 1, size, size)).astype(np.float32)
    labels = (np.arange(n) % 2).astype(np.int64)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(4, size - 12, size=2)
        images[i, 0, y : y + 8, x : x + 8] += 0.5
    return ImageData(np.clip(images, 0, 1), labels, tuple(f"img{i}" for i in range(n)))


def _apply(arrays: Arrays, update: Arrays) -> Arrays:
    return Arrays.from_dict({name: value + update[name] for name, value in arrays.items()})


def test_the_initial_model_is_deterministic_per_seed() -> None:
    assert classifier_initial(CONFIG, 1).allclose(classifier_initial(CONFIG, 1))
    assert not classifier_initial(CONFIG, 1).allclose(classifier_initial(CONFIG, 2))


def test_the_task_learns_a_bright_blob() -> None:
    task = MammoTask(CONFIG, _blobs(64, 0), _blobs(40, 1), site="s", seed=0)
    start = classifier_initial(CONFIG, 0)
    before = task.score(start, _blobs(40, 1))

    res = task.train(start, {"local_steps": 40}, round=1)
    after = task.score(_apply(start, res.update), _blobs(40, 1))

    assert after["accuracy"] >= 0.85 > before["accuracy"]
    assert after["auc"] > 0.9
    assert res.num_examples == 64 and math.isfinite(res.metrics["loss"])


def test_training_is_reproducible_per_round_and_differs_between_rounds() -> None:
    start = classifier_initial(CONFIG, 0)
    a = MammoTask(CONFIG, _blobs(32, 0), None, site="s", seed=3).train(start, {"local_steps": 3}, round=2)
    b = MammoTask(CONFIG, _blobs(32, 0), None, site="s", seed=3).train(start, {"local_steps": 3}, round=2)
    c = MammoTask(CONFIG, _blobs(32, 0), None, site="s", seed=3).train(start, {"local_steps": 3}, round=3)

    assert a.update.allclose(b.update)
    assert not a.update.allclose(c.update)


def test_fedbn_keeps_the_norm_layers_at_the_site() -> None:
    workload = MammoWorkload(CONFIG)
    norms = workload.norm_names()
    task = MammoTask(CONFIG, _blobs(32, 0), _blobs(8, 1), site="s")
    start = workload.initial(0)

    res = task.train(start, {"local_steps": 3, "keep_local_norm": True}, round=1)

    assert norms and any(name.endswith("running_mean") for name in norms)
    assert all(not np.any(res.update[name]) for name in norms)
    assert any(np.any(res.update[name]) for name in start.names() if name not in norms)
    personal = task.personal(start)
    assert any(not np.array_equal(personal[name], start[name]) for name in norms)


def test_dp_sgd_needs_group_norm_and_spends_what_it_says() -> None:
    with pytest.raises(TaskError, match="BatchNorm"):
        MammoTask(CONFIG, _blobs(20, 0), None, site="s", dp_sgd=DpSgdSpec(noise_multiplier=1.0, clip=1.0))
    config = CONFIG.model_copy(update={"norm": "group"})
    task = MammoTask(config, _blobs(40, 0), None, site="s", dp_sgd=DpSgdSpec(noise_multiplier=1.0, clip=1.0))
    start = classifier_initial(config, 0)

    (spend,) = task.privacy_spend({"local_steps": 3, "batch_size": 10})
    res = task.train(start, {"local_steps": 3, "batch_size": 10}, round=1)

    assert (spend.mechanism, spend.sampling_rate, spend.steps) == ("dp-sgd", 0.25, 3)
    assert task.class_weights is None  # no data-dependent loss weights under DP-SGD
    assert all(np.isfinite(v).all() for v in res.update.values())
    assert any(np.any(v) for v in res.update.values())
    assert MammoTask(config, _blobs(40, 0), None, site="s").privacy_spend({"local_steps": 3}) == []


@pytest.mark.parametrize(
    ("target", "keys"),
    [
        ("density", ("kappa", "accuracy", "balanced_accuracy", "recall_F", "recall_G", "recall_D")),
        ("abnormal", ("auc", "balanced_accuracy", "accuracy", "kappa", "recall_normal", "recall_abnormal")),
    ],
)
def test_score_returns_every_key_and_nan_recall_for_an_absent_class(target: str, keys: tuple[str, ...]) -> None:
    config = CONFIG.model_copy(update={"target": target})
    data = _blobs(12, 0)  # labels 0 and 1 only: for density, class D (2) is absent
    task = MammoTask(config, data, data, site="s")
    arrays = with_controls(classifier_initial(config, 0))  # as SCAFFOLD sends it

    scores = task.score(arrays, data)
    result = task.evaluate(arrays, {}, round=4)

    assert tuple(scores) == keys == score_keys(config)
    assert all(isinstance(v, float) for v in scores.values())
    assert math.isnan(scores["recall_D"]) if target == "density" else math.isfinite(scores["auc"])
    assert result.num_examples == 12 and math.isfinite(result.loss)
    assert tuple(result.metrics) == keys
    assert np.allclose([result.metrics[k] for k in keys], [scores[k] for k in keys], equal_nan=True)


def test_images_of_the_wrong_size_are_refused() -> None:
    with pytest.raises(TaskError, match="image_size 32"):
        MammoTask(CONFIG, _blobs(4, 0, size=24), None, site="s")


@dataclass
class _Data:
    root: Path
    sites: list[str] = field(default_factory=list)
    test_fraction: float = 0.25
    max_cases_per_site: int | None = None
    on_bad_case: str = "skip"


def _site(folder: Path, n: int, bright: bool) -> None:
    folder.mkdir(parents=True)
    rows = ["file,label,patient"]
    for i in range(n):
        level = 180 if i % 2 else 60
        pixels = np.full((40, 30), level if bright or i % 2 == 0 else 120, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"im{i}.png")
        rows.append(f"im{i}.png,{'abnormal' if i % 2 else 'normal'},pt{i // 2}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    (folder / "corrupt.png").write_bytes(b"\x89PNG broken")


def test_the_folder_layout_loads_each_site_and_names_what_it_skipped(tmp_path: Path) -> None:
    _site(tmp_path / "north", 16, bright=True)
    _site(tmp_path / "south", 12, bright=False)
    workload = MammoWorkload(CONFIG)

    splits = workload.load_sites(_Data(tmp_path), 0, lambda _: None)
    alone = workload.load_site(_Data(tmp_path), 0, tmp_path / "south", "south")

    assert [s.name for s in splits] == ["north", "south"]
    assert workload.size(splits[0].train) + workload.size(splits[0].test) == 16
    assert [s.item for s in splits[0].skipped] == ["corrupt.png"]
    assert alone.test.ids == splits[1].test.ids
    for split in splits:  # a patient's two images (one normal, one abnormal) stay on one side
        train_patients = {int(i.removeprefix("im").removesuffix(".png")) // 2 for i in split.train.ids}
        test_patients = {int(i.removeprefix("im").removesuffix(".png")) // 2 for i in split.test.ids}
        assert train_patients and test_patients and train_patients.isdisjoint(test_patients)
        assert len(split.train) == 2 * len(train_patients)
    assert workload.pool([s.train for s in splits]).images.shape[1:] == (1, 32, 32)
    assert workload.metric == "auc" and "abnormal vs normal" in workload.describe()


def test_the_folder_layout_refuses_an_unknown_label(tmp_path: Path) -> None:
    _site(tmp_path / "north", 4, bright=True)
    (tmp_path / "north" / "labels.csv").write_text("file,label\nim0.png,maybe\n")

    with pytest.raises(DataError, match=r"north.labels\.csv, row 2: label 'maybe'"):
        MammoWorkload(CONFIG).load_sites(_Data(tmp_path), 0, lambda _: None)
