"""A final (or fine-tuned) model file made ready to use: its task's network built, its arrays loaded, and the
site statistics its predictions need. ``confide predict`` and ``confide export`` (:mod:`confide.cli_predict`)
run on this.

The job comes from ``--job`` or, without it, from the model file's own card (:mod:`confide.model_file`). With
both, the job's task is used and must be of the model's kind; fields that differ from the card's are listed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from confide.api import Prediction, PredictRequest
from confide.config import JobConfig, with_code
from confide.errors import ConfigError, TaskError
from confide.model_file import ModelCard, read_model
from confide.tasks.torch_io import load_arrays
from confide.workloads.describe import job_of_card, kind_workload, restore_fields, task_section
from confide.workloads.kind import KindWorkload, pick_device
from confide.workloads.registry import make_workload

PREPROCESSING = "preprocessing.json"


@dataclass(frozen=True)
class LoadedModel:
    """A model file with its job, its card (None for a file without one), its workload and its network (eval mode,
    on its device), and notes for the person using it."""

    path: Path
    job: JobConfig
    card: ModelCard | None
    workload: KindWorkload
    network: torch.nn.Module
    notes: tuple[str, ...] = ()


def _differences(card: ModelCard, job: JobConfig, workload: KindWorkload) -> list[str]:
    theirs = task_section(job, workload.fields)
    mine = card.task
    return sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))


def load_for_use(
    path: Path, *, job: JobConfig | None = None, code: Path | None = None, device: str = "cpu"
) -> LoadedModel:
    """The model file at ``path`` ready to use (see the module docstring); ``code``: the folder of a task named by
    entry point (``task.name: python``); ``device``: cpu, auto, cuda or cuda:N."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    arrays, card = read_model(path)
    notes: list[str] = []
    if job is None:
        if card is None:
            raise ConfigError(
                f"model file {path} carries no description of its task (written before Confide described its "
                "models, or a checkpoint): give the job it was trained by with --job JOB"
            )
        job = job_of_card(card)
    elif card is not None and card.kind != job.task.name:
        raise ConfigError(
            f"model file {path} is a {card.kind} model (model {card.model} of job {card.job}); the job given is a "
            f"{job.task.name} job: give the job that trained it, or leave --job out to use the model's own"
        )
    if code is not None:
        job = with_code(job, code)
    workload = kind_workload(make_workload(job.task), f"model file {path}")
    if card is not None:
        restore_fields(workload, card)
        changed = _differences(card, job, workload)
        if changed:
            notes.append(f"the job's task differs from the model's description in: {', '.join(changed[:10])}")
    network = workload.network()
    try:
        load_arrays(network, arrays)
    except TaskError as exc:
        raise ConfigError(f"model file {path} does not fit the network of task {job.task.name}: {exc}") from None
    network = network.to(pick_device(device)).eval()
    return LoadedModel(path, job, card, workload, network, tuple(notes))


def read_statistics(path: Path) -> Mapping[str, Any]:
    """The statistics a site kept (its ``preprocessing.json``, or a report's ``models/preprocessing/<site>.json``):
    the document's ``statistics``."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"statistics file {path} cannot be read as JSON: {exc}") from None
    statistics = document.get("statistics") if isinstance(document, dict) else None
    if not isinstance(statistics, dict):
        raise ConfigError(f"statistics file {path} holds no 'statistics' object (a site's {PREPROCESSING})")
    return statistics


def site_statistics(model: Path, given: Path | None) -> tuple[Mapping[str, Any] | None, Path | None]:
    """The statistics to predict with and where they come from: ``given``, else the ``preprocessing.json`` beside
    the model (a deployed site's run folder), else none. Empty statistics count as none."""
    source = given if given is not None else Path(model).parent / PREPROCESSING
    if given is None and not source.is_file():
        return None, None
    statistics = read_statistics(source)
    return (statistics or None), source


def run_prediction(
    loaded: LoadedModel, inputs: Path, out: Path, statistics: Mapping[str, Any] | None = None
) -> Prediction:
    """``loaded``'s task run on ``inputs``, its predictions written to ``out``."""
    kind = loaded.workload.kind
    if kind.predict is None:
        raise ConfigError(
            f"task {loaded.job.task.name} cannot predict: its TaskKind has no predict (see docs/tasks.md)"
        )
    if not Path(inputs).exists():
        raise ConfigError(f"input {inputs} does not exist")
    with torch.no_grad():
        got = kind.predict(loaded.workload.fields, loaded.network, PredictRequest(Path(inputs), Path(out), statistics))
    if not isinstance(got, Prediction):
        raise TaskError(f"the task's predict returned a {type(got).__name__}, not a Prediction")
    return got


def example_input(loaded: LoadedModel, shape: tuple[int, ...] | None = None, seed: int = 0) -> torch.Tensor:
    """A sample batch of one for the network: standard normal values (seeded) of ``shape``, else of the shape the
    model's card or task gives for one example."""
    if shape is None:
        io = loaded.card.example_shape if loaded.card is not None else None
        describe = loaded.workload.kind.model_io
        if io is None and describe is not None:
            io = describe(loaded.workload.fields).example_shape
        shape = io
    if not shape:
        raise ConfigError(
            f"the shape of one input of task {loaded.job.task.name} is unknown (its model_io gives no example_shape): "
            "give it with --input-shape, e.g. 4,32,32,32"
        )
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((1, *shape), generator=generator)
