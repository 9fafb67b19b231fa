"""Using a trained table model: what its file says, what a site keeps, predictions for new rows, and its outputs
on a test split for the report.

- ``model_io``: the encoded input columns in order and the classes (binary: negative, positive).
- ``preprocessing``: the site's :class:`~confide.kinds.tables.statistics.TableStatistics`, learnt from its own
  training rows (kept beside its model as ``preprocessing.json``).
- ``predict``: a CSV of new rows (the feature columns; any other column is carried through) -> a CSV with every
  input column and the prediction: ``probability_positive`` and ``predicted`` (binary), ``probability_<class>``
  for each class and ``predicted`` (multiclass), ``risk`` (survival: the model's log relative hazard, higher means
  an earlier event). A row that cannot be encoded keeps empty predictions and its reason in ``problem``. The site's
  statistics are required: they are what its model expects its inputs to be standardised with.
- ``outputs``: probabilities or risks with the truth, the headline metric as :func:`table_scores` computes it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch.utils.data import TensorDataset

from confide.api import (
    ClassOutputs,
    ModelIO,
    Outputs,
    Place,
    Prediction,
    PredictRequest,
    Preprocessing,
    RiskOutputs,
    device_of,
)
from confide.errors import ConfigError, DataError, TaskError
from confide.kinds.tables.config import TableTaskConfig
from confide.kinds.tables.metrics import METRIC_KEYS, table_scores
from confide.kinds.tables.read import read_table
from confide.kinds.tables.statistics import TableStatistics, encode_rows, site_statistics

BINARY_CLASSES = ("negative", "positive")


def class_names(config: TableTaskConfig) -> tuple[str, ...] | None:
    """The model's output classes: negative and positive (binary), the classes (multiclass), none (survival)."""
    if config.kind == "binary":
        return BINARY_CLASSES
    if config.kind == "multiclass":
        return config.model_classes()
    return None


def model_io(config: TableTaskConfig) -> ModelIO:
    features = config.encoded_features()
    what = {
        "binary": f"one logit: {config.target!r} positive",
        "multiclass": f"one logit per class of {config.target!r}",
        "survival": f"a risk score (log relative hazard) for {config.target!r}, higher is earlier",
    }
    return ModelIO(
        inputs=f"{len(features) if features else 'the'} encoded columns of a table row, standardised with the "
        "statistics of the site that uses the model (its preprocessing.json)",
        outputs=what[config.kind],
        classes=class_names(config),
        features=features,
        example_shape=(len(features),) if features else None,
    )


def preprocessing(config: TableTaskConfig, place: Place) -> Preprocessing:
    stats = site_statistics(
        Path(place.folder),
        config.spec(),
        place.site,
        seed=place.seed,
        test_fraction=place.test_fraction,
        max_rows=place.max_cases,
    )
    imputed = " (the training mean fills a missing cell)" if stats.missing == "impute" else ""
    return Preprocessing(
        description=f"numeric columns standardised with the mean and standard deviation of this site's "
        f"{stats.training_rows} training rows (0/1 columns kept 0/1); categorical columns one-hot against their "
        f"first level; missing: {stats.missing}{imputed}",
        statistics=stats.model_dump(mode="json"),
    )


def _statistics(config: TableTaskConfig, given: Any) -> TableStatistics:
    if given is None:
        raise ConfigError(
            "a table model needs the preprocessing statistics of the site that uses it (its standardisation and "
            "imputation values): give the site's preprocessing.json (kept beside its model; in a simulation's report, "
            "models/preprocessing/<site>.json) with --statistics"
        )
    try:
        stats = TableStatistics.model_validate(given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"the statistics given are not a table site's statistics: {where}: {first['msg']}") from None
    features, _ = config.require_layout()
    if tuple(stats.features) != tuple(features):
        raise ConfigError(
            f"the statistics of site {stats.site} encode the columns {list(stats.features)[:8]}, the model expects "
            f"{list(features)[:8]}"
        )
    return stats


def _columns(config: TableTaskConfig) -> list[str]:
    if config.kind == "survival":
        return ["risk"]
    classes = class_names(config) or ()
    if config.kind == "binary":
        return ["probability_positive", "predicted"]
    return [*(f"probability_{name}" for name in classes), "predicted"]


def _cells(config: TableTaskConfig, output: np.ndarray) -> list[str]:
    if config.kind == "survival":
        return [f"{float(output[0]):.6g}"]
    if config.kind == "binary":
        p = 1.0 / (1.0 + math.exp(-float(output[0])))
        return [f"{p:.6f}", BINARY_CLASSES[int(p > 0.5)]]
    classes = class_names(config) or ()
    probs = np.exp(output - output.max())
    probs /= probs.sum()
    return [*(f"{float(v):.6f}" for v in probs), classes[int(np.argmax(probs))]]


def predict(config: TableTaskConfig, model: Any, request: PredictRequest) -> Prediction:
    """Predictions for every row of the CSV ``request.inputs``, written as the CSV ``request.out``."""
    stats = _statistics(config, request.statistics)
    source = Path(request.inputs)
    if source.is_dir():
        raise DataError(f"the table task predicts from a CSV file; {source} is a folder")
    table = read_table(source)
    rows = list(range(len(table.rows)))
    x, reasons = encode_rows(table, rows, stats)
    ok = np.array([r is None for r in reasons])
    outputs = np.zeros((len(rows), 1), dtype=np.float32)
    if ok.any():
        with torch.no_grad():
            got = model(torch.from_numpy(x[ok]).to(device_of(model))).float().cpu().numpy()
        outputs = np.zeros((len(rows), got.shape[1]), dtype=np.float32)
        outputs[ok] = got
    header = [*table.header, *_columns(config), "problem"]
    out = Path(request.out)
    if out.is_dir():
        out = out / f"{source.stem}-predictions.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    blank = [""] * (len(header) - len(table.header) - 1)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for r, row in enumerate(table.rows):
            cells = _cells(config, outputs[r]) if ok[r] else blank
            writer.writerow([*row, *cells, reasons[r] or ""])
    notes = [f"standardised with the statistics of site {stats.site} ({stats.training_rows} training rows)"]
    failed = [f"line {table.lines[r]}: {reasons[r]}" for r in range(len(rows)) if not ok[r]]
    if failed:
        notes.append(f"{len(failed)} row(s) not predicted; first: {failed[0]}")
    return Prediction(files=(out,), count=int(ok.sum()), notes=tuple(notes))


def outputs(config: TableTaskConfig, model: Any, data: Any) -> Outputs:
    """The model's outputs on a split of TensorDatasets ``(x, y)``, with the headline metric on any subset."""
    if not isinstance(data, TensorDataset):
        raise TaskError(f"the table task reads the TensorDatasets its read_site makes, got {type(data).__name__}")
    x, y = data.tensors
    raw = model(x.to(device_of(model))).float().cpu().detach()
    truth = y.numpy()
    _, n_classes = config.require_layout()
    classes = max(n_classes, 2)
    metric = METRIC_KEYS[config.kind][0]

    def headline(indices: np.ndarray) -> float:
        return float(table_scores(config.kind, raw[torch.from_numpy(indices)], truth[indices], classes)[metric])

    if config.kind == "survival":
        view: Any = RiskOutputs(
            truth[:, 0].astype(np.float64), truth[:, 1].astype(np.float64), raw[:, 0].numpy().astype(np.float64)
        )
    elif config.kind == "binary":
        p = torch.sigmoid(raw[:, 0]).numpy().astype(np.float64)
        view = ClassOutputs(truth.astype(np.int64), np.stack([1 - p, p], axis=1), BINARY_CLASSES)
    else:
        probs = torch.softmax(raw, dim=1).numpy().astype(np.float64)
        view = ClassOutputs(truth.astype(np.int64), probs, class_names(config) or ())
    per_example = None
    if metric == "accuracy":  # the mean of a per-row hit, as table_scores computes it: resampled all at once
        pred = (raw[:, 0] > 0).numpy() if config.kind == "binary" else raw.argmax(dim=1).numpy()
        per_example = (pred.astype(np.int64) == truth.astype(np.int64)).astype(np.float64)
    return Outputs(n=len(truth), headline=headline, view=view, per_example=per_example)
