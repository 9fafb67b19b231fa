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

        training = Training("brain_tumor", task.lr, task.batch_size, "adam", task.device, precision=task.precision)
        return KindWorkload(brain_tumor_kind(task), task, training)
    if name == "mammo_density":  # a preset of the image task (a job file reads it as one already)
        task = task.image_task()
        name = task.name
    if name == "table":
        from confide.kinds.tables.task import table_kind
        from confide.workloads.kind import KindWorkload, Training

        # train_stream (): the batch stream the table task's published figures were measured with
        training = Training(
            "table",
            task.lr,
            task.batch_size,
            task.optimizer,
            task.device,
            precision=task.precision,
            train_stream=(),
            test_loss=True,
        )
        return KindWorkload(table_kind(task), task, training)
    if name == "mil":
        from confide.kinds.mil.task import mil_kind
        from confide.workloads.kind import KindWorkload, Training

        training = Training("mil", task.lr, task.batch_size, "adam", task.device, precision=task.precision)
        return KindWorkload(mil_kind(task), task, training)
    if name == "python":
        from confide.workloads.kind import python_workload

        return python_workload(task)
    if name == "image_classification":
        from confide.kinds.images.task import image_kind
        from confide.workloads.kind import KindWorkload, Training

        training = Training(
            "image_classification", task.lr, task.batch_size, task.optimizer, task.device, precision=task.precision
        )
        return KindWorkload(image_kind(task), task, training)
    raise ConfigError(f"task: unknown task {name!r}")
