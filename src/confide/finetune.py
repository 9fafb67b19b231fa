"""Adapting a model to one site's own patients: a few plain local steps on its training split.

Used after federation, in the simulator (each site's fine-tuned model joins the cross-site matrix) and at a deployed
site (which keeps the final model and its adapted version).
"""

from __future__ import annotations

from collections.abc import Mapping

from confide.config import JobConfig
from confide.errors import ConfigError
from confide.records import Arrays
from confide.workloads.base import SiteTask, Workload


def finetune_config(job: JobConfig, workload: Workload) -> dict[str, float | int]:
    """What fine-tuning at a site does: ``finetune.steps`` local steps (default: one round's) at ``finetune.lr``
    (default: a quarter of the task's learning rate), plain."""
    return {
        "local_steps": job.finetune.steps if job.finetune.steps is not None else job.federation.local_steps,
        "lr": job.finetune.lr if job.finetune.lr is not None else workload.lr() / 4,
        "batch_size": workload.batch_size(),
    }


def adapt(task: SiteTask, start: Arrays, config: Mapping[str, float | int]) -> tuple[Arrays, float]:
    """``start`` trained further on the task's own training split: (the adapted model, its training loss)."""
    res = task.train(start, config, round=0)
    update = res.update
    if not isinstance(update, Arrays):
        raise ConfigError("fine-tuning produced a sparse update; it runs without privacy filters")
    tuned = Arrays.from_dict(
        {name: (value + update[name]).astype(value.dtype, copy=False) for name, value in start.items()}
    )
    return tuned, float(res.metrics.get("loss", float("nan")))
