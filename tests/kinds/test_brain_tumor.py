from __future__ import annotations

import numpy as np
import pytest

from confide.config import BrainTumorTaskConfig
from confide.errors import DataError, TaskError
from confide.kinds.brain_tumor.model import SegData, initial_arrays
from confide.kinds.brain_tumor.task import tumour_burden
from confide.tasks.torch_io import load_arrays
from confide.workloads.registry import make_workload
from tests.helpers import site_task_of


def _blobs(n: int, seed: int, size: int = 16) -> SegData:
    """Bright cubes in the FLAIR channel mark the tumour: a signal a small network learns in a few steps."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 0.3, size=(n, 4, size, size, size)).astype(np.float32)
    regions = np.zeros((n, 3, size, size, size), bool)
    for i in range(n):
        c = rng.integers(4, size - 8, size=3)
        sl = tuple(slice(int(x), int(x) + 5) for x in c)
        images[(i, 3, *sl)] += 2.0
        for r in range(3):
            regions[(i, r, *sl)] = True
    return SegData(images=images, regions=regions, case_ids=tuple(f"c{i}" for i in range(n)))


CONFIG = BrainTumorTaskConfig(roi=(16, 16, 16), init_filters=4, lr=0.01, augment=False)


def test_initial_model_is_deterministic_per_seed() -> None:
    assert initial_arrays(CONFIG, 1).allclose(initial_arrays(CONFIG, 1))
    assert not initial_arrays(CONFIG, 1).allclose(initial_arrays(CONFIG, 2))


def test_unet_variant_builds() -> None:
    arrays = initial_arrays(CONFIG.model_copy(update={"model": "unet"}), 0)

    assert len(arrays) > 0


def test_training_returns_an_update_that_lowers_the_loss() -> None:
    task = site_task_of(CONFIG, _blobs(6, 0), _blobs(3, 1), site="a", seed=0)
    start = initial_arrays(CONFIG, 0)

    first = task.train(start, {"local_steps": 15}, round=1)

    assert first.update.same_layout(start) and first.num_examples == 6
    assert any(np.abs(v).max() > 0 for v in first.update.values())
    assert first.metrics["loss_last"] < first.metrics["loss"]  # later steps lower than the running mean


def test_evaluate_reports_region_dice_in_range() -> None:
    task = site_task_of(CONFIG, None, _blobs(3, 1), site="a")

    res = task.evaluate(initial_arrays(CONFIG, 0), {}, round=1)

    assert res.num_examples == 3
    assert set(res.metrics) == {"dice_wt", "dice_tc", "dice_et", "dice_mean", "loss"}
    assert all(0.0 <= v <= 1.0 for v in res.metrics.values())
    assert res.loss == pytest.approx(1.0 - res.metrics["dice_mean"])


def test_nan_input_fails_loudly() -> None:
    data = _blobs(2, 0)
    data.images[0, 0, 0, 0, 0] = np.nan
    task = site_task_of(CONFIG, data, None, site="a")

    with pytest.raises(TaskError, match=r"(?i)nan"):
        task.train(initial_arrays(CONFIG, 0), {"local_steps": 2, "batch_size": 2}, round=1)


def test_site_without_data_says_so() -> None:
    task = site_task_of(CONFIG, None, None, site="empty")

    with pytest.raises(TaskError, match="no training examples"):
        task.train(initial_arrays(CONFIG, 0), {}, round=1)
    with pytest.raises(TaskError, match="no test examples"):
        task.evaluate(initial_arrays(CONFIG, 0), {}, round=1)


def test_arrays_of_another_model_are_refused() -> None:
    task = site_task_of(CONFIG, None, None, site="a")
    other = initial_arrays(CONFIG.model_copy(update={"init_filters": 8}), 0)

    with pytest.raises(TaskError, match="shape"):
        load_arrays(task.model, other)


def test_segdata_checks_shapes() -> None:
    with pytest.raises(DataError):
        SegData(
            images=np.zeros((2, 3, 4, 4, 4), np.float32),
            regions=np.zeros((2, 3, 4, 4, 4), bool),
            case_ids=("a", "b"),
        )


def test_the_headline_is_the_mean_dice_and_every_region_is_reported() -> None:
    workload = make_workload(CONFIG)

    assert workload.metric == "dice_mean"
    assert set(workload.metric_keys) == {"dice_mean", "dice_wt", "dice_tc", "dice_et"}


def test_the_reports_notes_give_each_splits_tumour_burden() -> None:
    regions = np.zeros((3, 3, 4, 4, 4), dtype=bool)
    regions[0, 0, :2] = True  # 32 of 64 voxels: 50 %
    regions[0, 1, 0] = True  # a core
    regions[1, 0, 0, 0] = True  # 4 voxels: 6.25 %
    regions[1, 2, 0, 0, 0] = True  # an enhancing voxel, and a core around it
    regions[1, 1, 0, 0, 0] = True
    # the third case has no tumour at all
    data = SegData(np.zeros((3, 4, 4, 4, 4), np.float32), regions, ("a", "b", "c"))

    text = tumour_burden(data)

    assert text == (
        "3 case(s), whole tumour 6.2 % of the volume (median; 0.0-50.0), tumour core in 2/3, enhancing tumour in 1/3"
    )
