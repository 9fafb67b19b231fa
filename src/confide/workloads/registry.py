"""The workload a job's task names."""

from __future__ import annotations

from typing import Any

from confide.errors import ConfigError
from confide.workloads.base import Workload


def make_workload(task: Any) -> Workload:
    """The workload for ``job.task`` (dispatched on its ``name``)."""
    name = getattr(task, "name", None)
    if name == "brain_tumor":
        from confide.kinds.brain_tumor.task import brain_tumor_kind
        from confide.workloads.kind import KindWorkload, Training

        training = Training("brain_tumor", task.lr, task.batch_size, "adam", task.device)
        return KindWorkload(brain_tumor_kind(task), task, training)
    if name == "mammo_density":
        from confide.kinds.mammography.workload import MammoWorkload

        return MammoWorkload(task)
    if name == "table":
        from confide.kinds.tables.workload import TableWorkload

        return TableWorkload(task)
    if name == "mil":
        from confide.kinds.mil.task import mil_kind
        from confide.workloads.kind import KindWorkload, Training

        return KindWorkload(mil_kind(task), task, Training("mil", task.lr, task.batch_size, "adam", task.device))
    if name == "python":
        from confide.workloads.kind import python_workload

        return python_workload(task)
    if name == "image_classification":
        from confide.kinds.images.task import image_kind
        from confide.workloads.kind import KindWorkload, Training

        training = Training("image_classification", task.lr, task.batch_size, task.optimizer, task.device)
        return KindWorkload(image_kind(task), task, training)
    raise ConfigError(f"task: unknown task {name!r}")
