"""Mixed precision (``task.precision``) for the torch tasks: bfloat16 on any device, float16 on CUDA only, DP-SGD in
float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from confide.config import load_job, parse_job
from confide.errors import ConfigError, TaskError
from confide.job_plan import site_task
from confide.new_task import new_task
from confide.privacy.config import DpSgdSpec
from confide.workloads.kind import TorchSiteTask, autocast_of
from confide.workloads.registry import make_workload


def _study(tmp_path: Path, precision: str) -> Path:
    folder = tmp_path / "study"
    new_task(folder)
    job = folder / "job.yaml"
    document = yaml.safe_load(job.read_text())
    document["task"].update({"precision": precision, "device": "cpu"})
    job.write_text(yaml.safe_dump(document))
    return job


def _trained_update(tmp_path: Path, precision: str) -> tuple[dict[str, np.ndarray], float]:
    job = load_job(_study(tmp_path / precision, precision))
    task = site_task(job, job.task.code / "data" / "hospital-a", "hospital-a")  # type: ignore[union-attr]
    assert isinstance(task, TorchSiteTask)
    start = make_workload(job.task).initial(0)
    result = task.train(start, {"local_steps": 20}, round=1)
    return {n: result.update[n] for n in result.update.names()}, float(result.metrics["loss"])


def test_bfloat16_trains_on_the_cpu_near_float32_and_not_identically(tmp_path: Path) -> None:
    full, full_loss = _trained_update(tmp_path, "float32")
    mixed, mixed_loss = _trained_update(tmp_path, "bfloat16")

    assert all(np.isfinite(v).all() and v.dtype == np.float32 for v in mixed.values())  # updates stay float32
    assert any(not np.array_equal(full[n], mixed[n]) for n in full)  # the forward pass did run in bfloat16
    assert mixed_loss == pytest.approx(full_loss, rel=0.05)  # ... and learnt the same thing, near enough


def test_float16_on_a_machine_without_cuda_is_refused_naming_bfloat16(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"float16 needs a CUDA device.*use bfloat16"):
        autocast_of("float16", torch.device("cpu"), dp_sgd=False, site="hospital-a")


def test_dp_sgd_with_mixed_precision_is_refused() -> None:
    with pytest.raises(TaskError, match="DP-SGD trains in float32"):
        autocast_of("bfloat16", torch.device("cpu"), dp_sgd=True, site="hospital-a")


def test_a_dp_sgd_site_task_in_bfloat16_is_refused_when_built(tmp_path: Path) -> None:
    job = load_job(_study(tmp_path, "bfloat16"))
    workload = make_workload(job.task)
    data = workload.load_site(job.data, 0, job.task.code / "data" / "hospital-a", "hospital-a")  # type: ignore[union-attr]

    with pytest.raises(TaskError, match=r"site hospital-a: task\.precision bfloat16: DP-SGD"):
        workload.task(
            data.train, data.test, site="hospital-a", seed=0, dp_sgd=DpSgdSpec(noise_multiplier=1.0, clip=1.0)
        )


@pytest.mark.parametrize(
    "task", [{"name": "table"}, {"name": "brain_tumor"}, {"name": "mil"}, {"name": "image_classification"}]
)
def test_a_wrong_precision_is_named_in_every_torch_task(task: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"task\.precision"):
        parse_job({"task": {**task, "precision": "half"}, "data": {"root": "."}})
