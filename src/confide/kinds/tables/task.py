"""Prediction on a clinical table (``task.name: table``) as a :class:`~confide.api.TaskKind`, written on the public
API like a user's own task.

- ``sites``: the values of the table's site column (``data.root`` is one CSV file, not a folder of sites).
- ``prepare`` (simulation only): the encoded feature columns (and, for multiclass, the classes) learnt from the whole
  table, so that the model can be built; a deployed server or site does not call it, so there the job must declare
  ``features``, the ``categories`` of every categorical column (and ``classes``).
- ``read_site``: :func:`confide.kinds.tables.site.read_site` (a site whose encoding differs is refused).
- ``build_model``: a linear model or a small MLP (:mod:`confide.kinds.tables.model`); ``loss``: binary
  cross-entropy, cross-entropy or the Cox partial likelihood of the batch (:mod:`confide.kinds.tables.losses`).
- ``evaluate``: :func:`confide.kinds.tables.metrics.table_scores` on the whole split.
- ``dp_sgd_refusal``: survival. The Cox loss of a batch is not a sum of per-patient terms, so clipping each
  patient's gradient of it does not bound what one patient changes, and the accountant's guarantee would not hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from confide.api import TaskKind, device_of
from confide.errors import DataError, TaskError
from confide.kinds.tables.config import TableTaskConfig
from confide.kinds.tables.losses import LOSSES
from confide.kinds.tables.metrics import METRIC_KEYS, table_scores
from confide.kinds.tables.model import kind_model
from confide.kinds.tables.predict import model_io, outputs, predict, preprocessing
from confide.kinds.tables.site import read_site
from confide.kinds.tables.table import table_schema, table_sites

COX_REFUSAL = (
    "a survival (Cox) model: the Cox loss of a batch is not a sum of per-patient terms (each patient is in the risk "
    "set of every earlier event), so clipping per-patient gradients does not bound one patient's influence. Use the "
    "client-level Gaussian filter instead"
)


def _table_file(config: TableTaskConfig, root: Path) -> Path:
    if Path(root).is_dir():
        raise DataError(
            f"data.root {root} is a folder; the table task reads one CSV file whose column "
            f"{config.site_column!r} names each row's site"
        )
    return Path(root)


def sites(config: TableTaskConfig, root: Path) -> list[str]:
    """The sites the table names in its site column, sorted."""
    return table_sites(_table_file(config, root), config.spec())


def prepare(config: TableTaskConfig, root: Path) -> TableTaskConfig:
    """The config with the layout every site of the table is encoded with (and the classes, for multiclass)."""
    schema = table_schema(_table_file(config, root), config.spec())
    return config.with_layout(schema.layout.features(), schema.classes)


def build_model(config: TableTaskConfig) -> torch.nn.Module:
    features, classes = config.require_layout()
    return kind_model(
        config.kind, len(features), config.model, config.hidden, classes=max(classes, 2), norm=config.norm
    )


def loss(config: TableTaskConfig, model: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    return LOSSES[config.kind](model(x), y)


def evaluate(config: TableTaskConfig, model: Any, data: Any) -> dict[str, float]:
    if not isinstance(data, TensorDataset):
        raise TaskError(f"the table task scores the TensorDatasets its read_site makes, got {type(data).__name__}")
    x, y = data.tensors
    outputs = model(x.to(device_of(model))).float().cpu()
    _, classes = config.require_layout()
    return table_scores(config.kind, outputs, y.numpy(), max(classes, 2))


def dp_sgd_refusal(config: TableTaskConfig) -> str | None:
    return COX_REFUSAL if config.kind == "survival" else None


def describe(config: TableTaskConfig) -> str:
    c = config
    model = f"MLP ({c.hidden} hidden{', BatchNorm' if c.norm == 'batch' else ''})" if c.model == "mlp" else "linear"
    what = {"binary": "binary classification", "multiclass": "multiclass classification", "survival": "survival (Cox)"}
    features = c.encoded_features()
    size = f"{len(features)} features" if features is not None else "features from the table"
    return f"clinical table, {what[c.kind]} of {c.target!r}, {model} model, {size}, missing values: {c.missing}"


def table_kind(config: TableTaskConfig) -> TaskKind[TableTaskConfig]:
    """The table task for ``config``: its metrics (headline first) depend on the kind of prediction."""
    return TaskKind(
        read_site=read_site,
        build_model=build_model,
        evaluate=evaluate,
        metrics=METRIC_KEYS[config.kind],
        fields=TableTaskConfig,
        loss=loss,
        sites=sites,
        prepare=prepare,
        dp_sgd_refusal=dp_sgd_refusal,
        describe=describe,
        model_io=model_io,
        preprocessing=preprocessing,
        predict=predict,
        outputs=outputs,
    )
