"""The records of the public task API for using a trained model (re-exported by :mod:`confide.api`).

A task may describe its model's inputs and outputs (:class:`ModelIO`, written into every model file Confide saves),
say what preprocessing a site must keep beside its copy of the model (:class:`Preprocessing`), run the model on new
inputs (:class:`PredictRequest` -> :class:`Prediction`) and give its outputs on a test split example by example
(:class:`Outputs`, which the report draws and bootstraps). Each is an optional member of
:class:`confide.api.TaskKind`; see docs/tasks.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

JSON = Any
"""A value JSON can hold: None, bool, int, float, str, lists and string-keyed dicts of them."""


@dataclass(frozen=True)
class ModelIO:
    """What a model file says about the model's inputs and outputs, so that it can be used without the job's data.

    ``classes``: the name of each output class, in output order (classification); ``features``: the model's input
    columns in order (a table's encoded columns); ``example_shape``: the shape of one input example, without the
    batch dimension (what ``confide export`` feeds the network); ``inputs`` and ``outputs``: one line each, for
    people."""

    inputs: str
    outputs: str
    classes: tuple[str, ...] | None = None
    features: tuple[str, ...] | None = None
    example_shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Preprocessing:
    """What a site keeps beside its copy of the model to prepare new inputs as it prepared its training data.

    ``description``: one line saying what is applied (a per-case normalisation needs no site statistic: say so);
    ``statistics``: JSON-ready values learnt from the site's own training data (imputation and standardisation
    values of a table), empty when none are needed. They stay at the site: Confide never sends them."""

    description: str
    statistics: Mapping[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictRequest:
    """One call of ``TaskKind.predict``: read ``inputs`` (a file or a folder of the task's kind), run the model,
    write what it predicts to ``out`` (a file or a folder; the task says which in its documentation).

    ``statistics``: the :attr:`Preprocessing.statistics` the site kept, when it kept any (None: not given)."""

    inputs: Path
    out: Path
    statistics: Mapping[str, JSON] | None = None


@dataclass(frozen=True)
class Prediction:
    """What ``TaskKind.predict`` wrote: the files, how many inputs were predicted, and notes (inputs skipped with
    their reasons, conventions used) for the person who ran it."""

    files: tuple[Path, ...]
    count: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SegmentationSlices:
    """One 2D slice per case for pictures: the image (n, H, W), the true and predicted regions (n, R, H, W) bool,
    the region names, the case ids and each case's headline score (its Dice)."""

    images: np.ndarray
    truth: np.ndarray
    predicted: np.ndarray
    regions: tuple[str, ...]
    case_ids: tuple[str, ...]
    scores: np.ndarray

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 3 or self.truth.shape != self.predicted.shape or self.truth.ndim != 4:
            raise ValueError(
                f"segmentation slices: images (n, H, W) and regions (n, R, H, W) expected, got {self.images.shape}, "
                f"{self.truth.shape} and {self.predicted.shape}"
            )
        if self.truth.shape[0] != n or self.truth.shape[2:] != self.images.shape[1:]:
            raise ValueError(f"segmentation slices: regions {self.truth.shape} do not fit images {self.images.shape}")
        if len(self.regions) != self.truth.shape[1] or len(self.case_ids) != n or self.scores.shape != (n,):
            raise ValueError("segmentation slices: one region name per region, one case id and score per case")


@dataclass(frozen=True)
class ClassOutputs:
    """Class probabilities (n, classes) and the true class indices (n,), with the class names."""

    truth: np.ndarray
    probabilities: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        n = self.truth.shape[0]
        if self.truth.ndim != 1 or self.probabilities.shape != (n, len(self.classes)):
            raise ValueError(
                f"class outputs: truth (n,) and probabilities (n, {len(self.classes)}) expected, got "
                f"{self.truth.shape} and {self.probabilities.shape}"
            )


@dataclass(frozen=True)
class RiskOutputs:
    """Survival: each example's time, event (1) or censoring (0), and the model's risk (higher: earlier event)."""

    time: np.ndarray
    event: np.ndarray
    risk: np.ndarray

    def __post_init__(self) -> None:
        if not (self.time.ndim == 1 and self.time.shape == self.event.shape == self.risk.shape):
            raise ValueError(
                f"risk outputs: time, event and risk must be (n,) alike, got {self.time.shape}, {self.event.shape} "
                f"and {self.risk.shape}"
            )


View = SegmentationSlices | ClassOutputs | RiskOutputs


@dataclass(frozen=True)
class Outputs:
    """A model's outputs on a split, example by example (``TaskKind.outputs``).

    ``n``: the examples; ``headline(indices)``: the headline metric on the examples at ``indices`` (an int array,
    repeats allowed: the report resamples them for a bootstrap interval; NaN where undefined); ``view``: what the
    report can draw (slices with outlines, a confusion matrix and ROC curves, Kaplan-Meier curves), or None;
    ``per_example``: where the headline is the mean of a score per example (accuracy, a mean Dice), those ``n``
    scores, so that the bootstrap resamples them all at once instead of calling ``headline`` a thousand times."""

    n: int
    headline: Callable[[np.ndarray], float]
    view: View | None = None
    per_example: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"outputs: n must be >= 0, got {self.n}")
        if self.per_example is not None and self.per_example.shape != (self.n,):
            shape = self.per_example.shape
            raise ValueError(f"outputs: per_example must hold one score per example ({self.n}), got shape {shape}")
