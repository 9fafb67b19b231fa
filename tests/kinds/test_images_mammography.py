"""Mammography as a configuration of the image task: the mammo_density preset, the class-weighted loss and its rule
under DP-SGD, the mammography augmentation, training and scoring through the one image code path."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from confide.audit.threads import one_thread
from confide.config import DataConfig, parse_job
from confide.errors import ConfigError, DataError, TaskError
from confide.kinds.images.config import ImageTaskConfig
from confide.kinds.images.dataset import ImageSet
from confide.kinds.images.presets import MammoDensityPreset
from confide.kinds.images.task import loss, pool
from confide.privacy.config import DpSgdSpec
from confide.records import Arrays
from confide.strategies.controls import with_controls
from confide.workloads.kind import KindWorkload, TorchSiteTask
from confide.workloads.registry import make_workload

PRESET = MammoDensityPreset(target="abnormal", image_size=32, width=4, blocks=2, lr=0.02, batch_size=16, augment=True)
CONFIG = PRESET.image_task()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: tiny models train many times faster than with two threads on a busy machine."""
    with one_thread():
        yield


def _workload(config: ImageTaskConfig = CONFIG) -> KindWorkload:
    workload = make_workload(config)
    assert isinstance(workload, KindWorkload)
    return workload


def _task(config: ImageTaskConfig, train: ImageSet | None, test: ImageSet | None, **kw: object) -> TorchSiteTask:
    workload = _workload(config)
    options = {"site": "s", "seed": 0, "dp_sgd": None, **kw}
    return workload.task(train, test, **options)  # type: ignore[arg-type]


def _blobs(n: int, seed: int, size: int = 32, weighted: bool = True) -> ImageSet:
    """Half the images hold a bright square (class 1) on noise: a signal a small CNN finds in a few dozen steps;
    weighted by class as read_site weighs a class_weighted job's training images."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.3, 0.08, size=(n, 1, size, size)).astype(np.float32)
    labels = (np.arange(n) % 2).astype(np.int64)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(4, size - 12, size=2)
        images[i, 0, y : y + 8, x : x + 8] += 0.5
    data = ImageSet.from_arrays(list(np.clip(images, 0, 1)), labels.tolist(), [f"img{i}" for i in range(n)])
    return data.with_class_weights(2) if weighted else data


def _apply(arrays: Arrays, update: Arrays) -> Arrays:
    return Arrays.from_dict({name: value + update[name] for name, value in arrays.items()})


def test_the_preset_in_a_job_file_is_an_image_classification_job() -> None:
    job = parse_job({"data": {"root": "x"}, "task": {"name": "mammo_density", "width": 8, "norm": "group"}})

    task = job.task
    assert isinstance(task, ImageTaskConfig) and task.name == "image_classification"
    assert (task.classes, task.ordinal, task.width, task.blocks, task.norm) == (("F", "G", "D"), True, 8, 4, "group")
    assert (task.intensity, task.augmentation, task.class_weighted, task.channels) == (
        "raw",
        "flip_batch_shift",
        True,
        1,
    )
    assert (task.mias.sites, task.mias.site_shift, task.lr, task.batch_size) == (3, True, 1e-3, 32)
    workload = make_workload(task)
    assert isinstance(workload, KindWorkload) and workload.metric == "kappa"
    assert make_workload(MammoDensityPreset(target="birads")).metric_keys == (
        "kappa",
        "balanced_accuracy",
        "accuracy",
        "auc",
    )
    assert job.train_config() == {"local_steps": 10, "lr": 1e-3, "batch_size": 32}


@pytest.mark.parametrize(
    ("task", "named"),
    [
        ({"name": "mammo_density", "colour": 3}, r"task\.colour: Extra inputs are not permitted"),
        ({"name": "mammo_density", "target": "shape"}, r"task\.target"),
        ({"name": "mammo_density", "image_size": 16, "blocks": 5}, r"5 blocks halve an image of side 16"),
        ({"name": "mammo_density", "split_sites": 0}, r"task\.split_sites"),
    ],
)
def test_a_wrong_preset_field_is_named(task: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_job({"data": {"root": "x"}, "task": task})


def test_the_initial_model_is_deterministic_per_seed() -> None:
    workload = _workload()

    assert workload.initial(1).allclose(workload.initial(1))
    assert not workload.initial(1).allclose(workload.initial(2))


def test_the_task_learns_a_bright_blob() -> None:
    task = _task(CONFIG, _blobs(64, 0), _blobs(40, 1))
    start = _workload().initial(0)
    before = task.score(start, _blobs(40, 1))

    res = task.train(start, {"local_steps": 40}, round=1)
    after = task.score(_apply(start, res.update), _blobs(40, 1))

    assert after["accuracy"] >= 0.85 > before["accuracy"]
    assert after["auc"] > 0.9
    assert res.num_examples == 64 and math.isfinite(res.metrics["loss"])


def test_training_is_reproducible_per_round_and_differs_between_rounds() -> None:
    start = _workload().initial(0)

    def round_of(number: int) -> Arrays:
        return _task(CONFIG, _blobs(32, 0), None, seed=3).train(start, {"local_steps": 3}, round=number).update

    a, b, c = round_of(2), round_of(2), round_of(3)

    assert a.allclose(b)
    assert not a.allclose(c)


def test_fedbn_keeps_the_norm_layers_at_the_site() -> None:
    workload = _workload()
    norms = workload.norm_names()
    task = _task(CONFIG, _blobs(32, 0), _blobs(8, 1))
    start = workload.initial(0)

    res = task.train(start, {"local_steps": 3, "keep_local_norm": True}, round=1)

    assert norms and any(name.endswith("running_mean") for name in norms)
    assert all(not np.any(res.update[name]) for name in norms)
    assert any(np.any(res.update[name]) for name in start.names() if name not in norms)
    personal = task.personal(start)
    assert any(not np.array_equal(personal[name], start[name]) for name in norms)


def test_dp_sgd_refuses_batch_norm_and_class_weights_and_spends_what_it_says() -> None:
    dp = DpSgdSpec(noise_multiplier=1.0, clip=1.0)
    with pytest.raises(TaskError, match="BatchNorm"):
        _task(CONFIG.model_copy(update={"class_weighted": False}), _blobs(20, 0, weighted=False), None, dp_sgd=dp)
    grouped = CONFIG.model_copy(update={"norm": "group"})
    with pytest.raises(TaskError, match=r"DP-SGD cannot train task image_classification: class_weighted: .*statistic"):
        _task(grouped, _blobs(20, 0), None, dp_sgd=dp)
    config = grouped.model_copy(update={"class_weighted": False})
    task = _task(config, _blobs(40, 0, weighted=False), None, dp_sgd=dp)
    start = _workload(config).initial(0)

    (spend,) = task.privacy_spend({"local_steps": 3, "batch_size": 10})
    res = task.train(start, {"local_steps": 3, "batch_size": 10}, round=1)

    assert (spend.mechanism, spend.sampling_rate, spend.steps) == ("dp-sgd", 0.25, 3)
    assert all(np.isfinite(v).all() for v in res.update.values())
    assert any(np.any(v) for v in res.update.values())
    assert _task(config, _blobs(40, 0, weighted=False), None).privacy_spend({"local_steps": 3}) == []


def test_the_class_weighted_loss_is_torchs_weighted_cross_entropy_with_the_sites_counts() -> None:
    labels = [0, 0, 0, 1]  # class 0 three times as frequent: weights 4/6 and 4/2
    images = [np.full((1, 32, 32), 0.1 * i, dtype=np.float32) for i in range(4)]
    site = ImageSet.from_arrays(images, labels, ["a", "b", "c", "d"]).with_class_weights(2)
    other = ImageSet.from_arrays(images[:2], [1, 0], ["e", "f"]).with_class_weights(2)
    torch.manual_seed(0)
    model = _workload().network()
    batch = (site.images[1:], site.labels[1:], site.weights[1:] if site.weights is not None else None)

    got = loss(CONFIG, model, batch)
    pooled = pool(CONFIG, [site, other])
    unweighted = CONFIG.model_copy(update={"class_weighted": False})

    logits = model(site.images[1:].float())
    expected = torch.nn.functional.cross_entropy(logits, site.labels[1:], weight=torch.tensor([4 / 6, 4 / 2]))
    assert torch.equal(got, expected)
    assert pooled.weights is not None  # weighed afresh over the pool: 4 of class 0, 2 of class 1
    assert torch.allclose(pooled.weights, torch.tensor([0.75, 0.75, 0.75, 1.5, 1.5, 0.75]))
    assert torch.equal(loss(unweighted, model, batch[:2]), torch.nn.functional.cross_entropy(logits, site.labels[1:]))
    with pytest.raises(TaskError, match="carry no loss weights"):
        loss(CONFIG, model, batch[:2])


@pytest.mark.parametrize(
    ("target", "keys", "absent"),
    [
        ("density", ("kappa", "balanced_accuracy", "accuracy", "auc"), "recall_D"),
        ("abnormal", ("balanced_accuracy", "accuracy", "auc"), None),
    ],
)
def test_score_returns_every_key_and_nan_recall_for_an_absent_class(
    target: str, keys: tuple[str, ...], absent: str | None
) -> None:
    config = PRESET.model_copy(update={"target": target}).image_task()
    data = _blobs(12, 0)  # labels 0 and 1 only: for density, class D (2) is absent
    task = _task(config, data, data)
    arrays = with_controls(_workload(config).initial(0))  # as SCAFFOLD sends it

    scores = task.score(arrays, data)
    result = task.evaluate(arrays, {}, round=4)

    assert tuple(scores)[: len(keys)] == keys == _workload(config).metric_keys
    assert all(isinstance(v, float) for v in scores.values())
    assert all(f"recall_{name}" in scores for name in config.classes or ())
    assert math.isnan(scores[absent]) if absent else math.isfinite(scores["auc"])
    assert result.num_examples == 12 and math.isfinite(result.loss) and result.loss == scores["loss"]
    assert np.allclose([result.metrics[k] for k in scores], list(scores.values()), equal_nan=True)


def test_images_of_the_wrong_size_are_refused() -> None:
    task = _task(CONFIG, _blobs(4, 0, size=24), _blobs(4, 0, size=24))
    start = _workload().initial(0)

    with pytest.raises(TaskError, match="image_size 32"):
        task.train(start, {"local_steps": 1}, round=1)
    with pytest.raises(TaskError, match="image_size 32"):
        task.score(start, _blobs(4, 0, size=24))


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
    workload = _workload()

    splits = workload.load_sites(DataConfig(root=tmp_path), 0, lambda _: None)
    alone = workload.load_site(DataConfig(root=tmp_path), 0, tmp_path / "south", "south")

    assert [s.name for s in splits] == ["north", "south"]
    assert workload.size(splits[0].train) + workload.size(splits[0].test) == 16
    assert [s.item for s in splits[0].skipped] == ["corrupt.png"]
    assert alone.test.files == splits[1].test.files
    for split in splits:  # a patient's two images (one normal, one abnormal) stay on one side
        train_patients = {int(i.removeprefix("im").removesuffix(".png")) // 2 for i in split.train.files}
        test_patients = {int(i.removeprefix("im").removesuffix(".png")) // 2 for i in split.test.files}
        assert train_patients and test_patients and train_patients.isdisjoint(test_patients)
        assert len(split.train) == 2 * len(train_patients)
        assert split.train.weights is not None and any("inverse class frequency" in n for n in split.notes)
    pooled = workload.pool([s.train for s in splits])
    assert pooled.images.shape[1:] == (1, 32, 32) and pooled.weights is not None
    assert workload.metric == "balanced_accuracy" and "class-weighted loss" in workload.describe()


def test_the_folder_layout_refuses_an_unknown_label(tmp_path: Path) -> None:
    _site(tmp_path / "north", 4, bright=True)
    (tmp_path / "north" / "labels.csv").write_text("file,label\nim0.png,maybe\n")

    with pytest.raises(DataError, match=r"north.labels\.csv, line 2: label 'maybe' of 'im0\.png' is not one of"):
        _workload().load_sites(DataConfig(root=tmp_path), 0, lambda _: None)


def test_the_example_job_is_the_preset_it_documents() -> None:
    from confide.config import load_job

    job = load_job(Path(__file__).resolve().parents[2] / "jobs" / "mias_density.yaml")
    preset = {"name": "mammo_density", "target": "density", "width": 8, "norm": "group", "lr": 0.002}

    assert job.task == parse_job({"data": {"root": "x"}, "task": preset}).task
