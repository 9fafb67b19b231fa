"""A model's card (:class:`confide.model_file.ModelCard`) from the job and the workload that trained it, and the
job a card stands for (what ``confide predict`` uses when no job file is given)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from confide.api_use import ModelIO
from confide.config import JobConfig, parse_job
from confide.errors import ConfigError
from confide.model_file import ModelCard, confide_version
from confide.workloads.base import Workload
from confide.workloads.kind import KindWorkload


def kind_workload(workload: Workload, what: str) -> KindWorkload:
    """``workload`` as the task-API workload every built-in and user task is (else a ConfigError naming ``what``)."""
    if not isinstance(workload, KindWorkload):
        raise ConfigError(f"{what}: the task {type(workload).__name__} is not written on the task API")
    return workload


def task_section(job: JobConfig, fields: BaseModel) -> dict[str, Any]:
    """The job's task section with the task's fields as the job ran them (completed by ``prepare``): a built-in
    task's fields are its whole section; a user's task adds its fields to Confide's own (entry, lr, ...)."""
    own = json.loads(job.task.model_dump_json())
    if type(fields) is type(job.task):
        return dict(json.loads(fields.model_dump_json()))
    return {**own, **json.loads(fields.model_dump_json())}


def model_io(workload: KindWorkload) -> ModelIO | None:
    """What the task says of its model's inputs and outputs (None when it does not say)."""
    describe = workload.kind.model_io
    return None if describe is None else describe(workload.fields)


def card_for(
    job: JobConfig,
    workload: Workload,
    model: str,
    *,
    site: str | None = None,
    when: datetime | None = None,
) -> ModelCard:
    """The card of model ``model`` of ``job`` (``site``: whose version it is), trained by ``workload``."""
    kind = kind_workload(workload, f"describing model {model}")
    io = model_io(kind)
    return ModelCard(
        job=job.name,
        model=model,
        site=site,
        kind=str(job.task.name),
        task=task_section(job, kind.fields),
        metric=kind.metric,
        metrics=tuple(kind.metric_keys),
        inputs=io.inputs if io else "",
        outputs=io.outputs if io else "",
        classes=io.classes if io else None,
        features=io.features if io else None,
        example_shape=io.example_shape if io else None,
        seed=job.seed,
        strategy=job.federation.strategy,
        rounds=job.federation.rounds,
        confide_version=confide_version(),
        created=(when or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds"),
    )


def job_of_card(card: ModelCard) -> JobConfig:
    """The job a card describes, enough to build its model and predict (its data are not needed)."""
    document = {"name": card.job, "seed": card.seed, "task": card.task, "data": {"root": "."}}
    return parse_job(document, source=f"the description of model {card.model}")


def restore_fields(workload: KindWorkload, card: ModelCard) -> None:
    """Give ``workload`` what a simulation learnt from the data and the task section does not hold: a table's
    encoded columns (and multiclass classes), kept by the table task outside its fields. A job whose declared
    columns differ from the model's is refused, naming both."""
    from confide.kinds.tables.config import TableTaskConfig

    fields = workload.fields
    if not isinstance(fields, TableTaskConfig) or card.features is None:
        return
    declared = fields.encoded_features()
    if declared is None:
        workload.fields = fields.with_layout(card.features, card.classes or ())
    elif tuple(declared) != tuple(card.features):
        raise ConfigError(
            f"the job encodes the table's columns as {list(declared)[:8]}, the model {card.model} was trained on "
            f"{list(card.features)[:8]}"
        )
