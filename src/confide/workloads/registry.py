"""The workload a job's task names."""

from __future__ import annotations

from typing import Any

from confide.errors import ConfigError
from confide.workloads.base import Workload


def _built_in(kind: Any, task: Any, optimizer: str = "adam", **extra: Any) -> Workload:
    """A built-in kind's workload: Confide's own settings (lr, batch size, device, precision) read from its config."""
    from confide.workloads.kind import KindWorkload, Training

    training = Training(task.name, task.lr, task.batch_size, optimizer, task.device, precision=task.precision, **extra)  # type: ignore[arg-type]
    return KindWorkload(kind, task, training)


def make_workload(task: Any) -> Workload:
    """The workload for ``job.task`` (dispatched on its ``name``)."""
    name = getattr(task, "name", None)
    if name == "mammo_density":  # a preset of the image task (a job file reads it as one already)
        task = task.image_task()
        name = task.name
    if name == "brain_tumor":
        from confide.kinds.brain_tumor.task import brain_tumor_kind

        return _built_in(brain_tumor_kind(task), task)
    if name == "table":
        from confide.kinds.tables.task import table_kind

        # train_stream (): the batch stream the table task's published figures were measured with
        return _built_in(table_kind(task), task, task.optimizer, train_stream=(), test_loss=True)
    if name == "mil":
        from confide.kinds.mil.task import mil_kind

        return _built_in(mil_kind(task), task)
    if name == "python":
        from confide.workloads.kind import python_workload

        return python_workload(task)
    if name == "image_classification":
        from confide.kinds.images.task import image_kind

        return _built_in(image_kind(task), task, task.optimizer)
    raise ConfigError(f"task: unknown task {name!r}")
