"""Confide's public task API: bring your own PyTorch model, data and metrics; Confide does the rest.

A task is a :class:`TaskKind`: three functions you write (read one site's data, build the network, score it) and,
if you need them, a loss, a list of sites and a pooling rule. A job names it by entry point::

    task: {name: python, entry: "task:task", lr: 0.01, batch_size: 32, hidden: 16}

``entry`` is ``module:attribute``: the module is a file beside the job file (or, at a deployed site, in the folder
the site's operator gives with ``--code``; the server never sends code). Fields other than Confide's own (``name``,
``entry``, ``code``, ``lr``, ``batch_size``, ``optimizer``, ``device``, ``precision``) are validated by your task's
``fields`` model, so a wrong field is named like any other.

Confide owns the training loop: each round it loads the global model into your network, draws batches from your
training data, computes your loss and steps the optimiser, with whatever the job asks of local training
(FedProx's term, SCAFFOLD's correction, FedBN's kept normalisation layers, DP-SGD with per-example clipping and
noise), then sends the update through the site's privacy filters. Everything else (strategies, filters, the
ledger, baselines, fine-tuning, the cross-site report, deployment) works for your task as for the built-in ones.
See docs/tasks.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from confide.api_use import (
    ClassOutputs,
    ModelIO,
    Outputs,
    Prediction,
    PredictRequest,
    Preprocessing,
    RiskOutputs,
    SegmentationSlices,
)


class Dataset(Protocol):
    """A map-style dataset: ``len(data)`` examples, ``data[i]`` one example (for example a ``(x, y)`` pair of
    tensors). ``torch.utils.data.Dataset`` subclasses with ``__len__`` and ``TensorDataset`` are datasets."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class NoFields(BaseModel):
    """A task without fields of its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Place:
    """Where one site's data is, as :attr:`TaskKind.read_site` is given it.

    ``folder``: in a simulation, ``data.root/<site>`` when that is a folder, else ``data.root`` itself (a table
    whose rows name their site); at a deployed site, what its operator gave with ``--data``."""

    folder: Path
    site: str
    seed: int  # the job's seed: split and shuffle with it, so a job reproduces
    test_fraction: float  # the job's data.test_fraction, for a site without a predefined split
    max_cases: int | None = None  # the job's data.max_cases_per_site: read at most this many (None: all)
    on_bad_case: str = "skip"  # the job's data.on_bad_case: skip an unreadable input (and list it), or "stop"
    progress: Callable[[str], None] = field(default=lambda line: None, compare=False)  # one line: what is read now


@dataclass(frozen=True)
class SiteData:
    """One site's data: its training split, its test split (None where a deployed site has none), and what the
    report should say about it."""

    train: Dataset
    test: Dataset | None
    notes: tuple[str, ...] = ()  # one line each: class balance, acquisition, what was dropped
    skipped: tuple[tuple[str, str], ...] = ()  # (item, reason) for every input that could not be used


F = TypeVar("F", bound=BaseModel)


@dataclass(frozen=True)
class TaskKind(Generic[F]):
    """What a kind of job brings. Every function gets the task's validated fields first.

    - ``read_site(fields, place) -> SiteData``: one site's data, split into train and test.
    - ``build_model(fields) -> torch.nn.Module``: the untrained network (Confide seeds torch before calling it,
      so every site and the server build the same initial model).
    - ``evaluate(fields, model, data) -> {metric: value}``: every metric of ``metrics`` for ``model`` (in eval
      mode, no gradients, on the task's device: move inputs with :func:`device_of`) on ``data`` (any site's test
      split). Use NaN for a metric that is undefined on ``data``.
    - ``metrics``: the keys ``evaluate`` returns, the headline first; the headline is higher-is-better.
    - ``loss(fields, model, batch) -> tensor`` (optional): the mean loss of a batch, computed through ``model``
      (default: cross-entropy of ``model(x)`` against ``y`` for a batch ``(x, y)``). Under DP-SGD it must be the
      mean of per-example terms, each depending only on its own example.
    - ``sites(fields, root) -> names`` (optional): the sites a simulation's ``data.root`` holds (default: its
      sub-folders).
    - ``pool(fields, parts) -> dataset`` (optional): several sites' training splits as one, for the pooled
      baseline (default: their concatenation).
    - ``collate(fields, examples) -> batch`` (optional): a training batch from a list of examples, augmented
      where the task augments (draw from torch's global generator, which Confide seeds per site and round);
      default: torch's ``default_collate`` (a ``TensorDataset`` is indexed directly).
    - ``augment(fields, batch, generator) -> batch`` (optional): a training batch augmented, drawing from
      ``generator`` (seeded from the job, the site and the round), after ``collate``.
    - ``dp_sgd_refusal(fields) -> reason or None`` (optional): why DP-SGD cannot train this task with these
      fields (a loss that is not a mean of per-example terms, such as the Cox partial likelihood), so that a job
      asking for it is refused with the reason instead of reporting an epsilon that does not hold.
    - ``prepare(fields, root) -> fields`` (optional): in a simulation, before any site is read, the fields
      completed from the data (for example the label vocabulary read from every site's files). A deployed server
      reads no data: there the job must give those fields.
    - ``describe``: one line for the report, or ``describe(fields) -> line`` for a line that tells what ``prepare``
      completed (the fields as the job runs them).
    - ``model_io(fields) -> ModelIO`` (optional): the model's inputs and outputs (class names, a table's encoded
      feature order), written into every model file Confide saves with the task's fields, so the file can be used
      without the job's data.
    - ``preprocessing(fields, place) -> Preprocessing`` (optional): what a deployed site keeps beside its copy of
      the final model to prepare new inputs as its training data were (a table's imputation and standardisation
      values from its own training rows; a per-case normalisation keeps none and says so). Never sent.
    - ``predict(fields, model, request) -> Prediction`` (optional): the model (eval mode, no gradients) run on new
      inputs of the task's kind read from ``request.inputs``, its predictions written to ``request.out``
      (``confide predict``).
    - ``outputs(fields, model, data) -> Outputs`` (optional): the model's outputs on a split example by example,
      for the report's pictures of predictions and the bootstrap interval of the headline metric.
    """

    read_site: Callable[[F, Place], SiteData]
    build_model: Callable[[F], Any]
    evaluate: Callable[[F, Any, Any], Mapping[str, float]]
    metrics: tuple[str, ...]
    fields: type[F] = NoFields  # type: ignore[assignment]
    loss: Callable[[F, Any, Any], Any] | None = None
    sites: Callable[[F, Path], Sequence[str]] | None = None
    pool: Callable[[F, Sequence[Any]], Any] | None = None
    collate: Callable[[F, list[Any]], Any] | None = None
    augment: Callable[[F, Any, Any], Any] | None = None
    prepare: Callable[[F, Path], F] | None = None
    dp_sgd_refusal: Callable[[F], str | None] | None = None
    describe: str | Callable[[F], str] = ""
    model_io: Callable[[F], ModelIO] | None = None
    preprocessing: Callable[[F, Place], Preprocessing] | None = None
    predict: Callable[[F, Any, PredictRequest], Prediction] | None = None
    outputs: Callable[[F, Any, Any], Outputs] | None = None

    def __post_init__(self) -> None:
        if not self.metrics or any(not isinstance(m, str) or not m for m in self.metrics):
            raise TypeError(f"TaskKind.metrics must name at least one metric, headline first; got {self.metrics!r}")
        if len(set(self.metrics)) != len(self.metrics):
            raise TypeError(f"TaskKind.metrics names a metric twice: {self.metrics!r}")
        if not (isinstance(self.fields, type) and issubclass(self.fields, BaseModel)):
            raise TypeError(f"TaskKind.fields must be a pydantic model class, got {self.fields!r}")


def device_of(model: Any) -> Any:
    """The device a model's parameters are on (where its inputs must go): ``x.to(device_of(model))``."""
    import torch

    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


@dataclass(frozen=True)
class Split:
    """Indices of a split of ``n`` examples."""

    train: np.ndarray
    test: np.ndarray


def split_indices(
    n: int,
    test_fraction: float,
    seed: int,
    *,
    labels: Sequence[Any] | None = None,
    groups: Sequence[Any] | None = None,
) -> Split:
    """A seeded train/test split of ``n`` examples: stratified by ``labels`` when given (each label's examples
    split in the same proportion), keeping each group (a patient's several images) on one side when ``groups`` are
    given. The same arguments give the same split."""
    if n < 2:
        raise ValueError(f"a train/test split needs at least 2 examples, got {n}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed)
    keys: list[Any] = list(groups) if groups is not None else list(range(n))
    if len(keys) != n or (labels is not None and len(labels) != n):
        raise ValueError("labels and groups must have one entry per example")
    units: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        units.setdefault(key, []).append(i)
    strata: dict[Any, list[Any]] = {}
    for key, members in units.items():
        stratum = labels[members[0]] if labels is not None else None
        strata.setdefault(stratum, []).append(key)
    test: list[int] = []
    for stratum in sorted(strata, key=repr):
        unit_keys = strata[stratum]
        order = rng.permutation(len(unit_keys))
        # at least one unit on each side of a stratum of two or more; a stratum of one unit trains
        take = min(max(round(len(unit_keys) * test_fraction), 1), len(unit_keys) - 1) if len(unit_keys) > 1 else 0
        for j in order[:take]:
            test.extend(units[unit_keys[j]])
    if not test:  # every stratum had one unit: take one unit for testing
        test = units[keys[int(rng.integers(n))]]
    test_set = set(test)
    train = np.array([i for i in range(n) if i not in test_set], dtype=np.int64)
    return Split(train=train, test=np.array(sorted(test_set), dtype=np.int64))


__all__ = [
    "ClassOutputs",
    "Dataset",
    "ModelIO",
    "NoFields",
    "Outputs",
    "Place",
    "PredictRequest",
    "Prediction",
    "Preprocessing",
    "RiskOutputs",
    "SegmentationSlices",
    "SiteData",
    "Split",
    "TaskKind",
    "device_of",
    "split_indices",
]
