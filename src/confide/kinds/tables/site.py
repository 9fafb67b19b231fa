"""One site's rows of a clinical table, as the table task reads them (:func:`read_site`).

``place.folder`` is a CSV file: in a simulation the whole table, at a deployed site the site's own (the whole table
or only its rows); the rows whose site column names ``place.site`` are read, split and standardised by
:func:`confide.kinds.tables.table.load_table` (the split column honoured, ``val`` rows set aside). A site whose
encoding differs from the model's (a categorical level it lacks, under a layout learnt from another table) is
refused, naming it. The splits are ``TensorDataset``s ``(x, y)``: x float32; y float32 0/1 (binary), int64 class
indices (multiclass), (n, 2) float32 time and event (survival).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from confide.api import Place, SiteData
from confide.errors import DataError, TaskError
from confide.kinds.tables.config import TableTaskConfig
from confide.kinds.tables.table import TableRows, TableSplit, load_table

MAX_SKIPPED_LISTED = 100


def read_site(config: TableTaskConfig, place: Place) -> SiteData:
    """The site's training and test rows, what was dropped and the report's notes on them."""
    path = Path(place.folder)
    if path.is_dir():
        raise DataError(f"the table task reads a CSV file; {path} is a folder")
    expected, _ = config.require_layout()
    split = load_table(
        path,
        config.spec(),
        seed=place.seed,
        test_fraction=place.test_fraction,
        sites=[place.site],
        max_rows=place.max_cases,
    )[place.site]
    if split.features != expected:
        raise DataError(
            f"site {split.site} encodes the features {list(split.features)}, the model expects {list(expected)}: "
            "declare features and the categories of every categorical column in the task"
        )
    classes = config.model_classes()
    if config.kind == "multiclass" and split.classes != classes:
        raise DataError(f"site {split.site} has the classes {split.classes}, the model {classes}")
    return SiteData(
        rows_dataset(split.train, split.site),
        rows_dataset(split.test, split.site),
        notes(config, split),
        skipped(split),
    )


def rows_dataset(rows: TableRows, site: str) -> TensorDataset:
    """A split's rows as tensors ``(x, y)`` (see the module's docstring for y)."""
    x = torch.from_numpy(np.asarray(rows.x, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] != rows.y.shape[0]:
        raise TaskError(f"site {site}: rows and targets do not match ({tuple(x.shape)}, {rows.y.shape})")
    return TensorDataset(x, targets_tensor(rows.y, rows.kind, site))


def targets_tensor(y: np.ndarray, kind: str, site: str) -> torch.Tensor:
    if kind == "survival":
        if y.ndim != 2 or y.shape[1] != 2:
            raise TaskError(f"site {site}: survival targets must be (n, 2) time and event, got {y.shape}")
        return torch.from_numpy(np.asarray(y, dtype=np.float32))
    if y.ndim != 1:
        raise TaskError(f"site {site}: {kind} targets must be one label per row, got {y.shape}")
    if kind == "multiclass":
        return torch.from_numpy(np.asarray(y, dtype=np.int64))
    return torch.from_numpy(np.asarray(y, dtype=np.float32))


def skipped(split: TableSplit) -> tuple[tuple[str, str], ...]:
    """The site's dropped rows by file line (the first hundred, then how many more)."""
    dropped = split.dropped
    out = [(f"line {line}", reason) for line, reason in dropped[:MAX_SKIPPED_LISTED]]
    if len(dropped) > MAX_SKIPPED_LISTED:
        out.append((f"{len(dropped) - MAX_SKIPPED_LISTED} more rows", "missing values"))
    return tuple(out)


def notes(config: TableTaskConfig, split: TableSplit) -> tuple[str, ...]:
    """The report's lines on a site: rows kept and dropped, each split's balance, the val rows set aside."""
    kept = len(split.y_train) + len(split.y_test)
    out: tuple[str, ...] = (
        f"{kept} rows kept, {len(split.dropped)} dropped (missing values, missing: {config.missing})",
        f"train {len(split.y_train)} ({balance(split.train, split.classes)}), "
        f"test {len(split.y_test)} ({balance(split.test, split.classes)})",
    )
    if split.validation:
        out += (f"{split.validation} rows marked val set aside (the table task neither trains on nor scores them)",)
    return out


def balance(rows: TableRows, classes: tuple[str, ...] = ()) -> str:
    """The class balance of a split in words."""
    if len(rows) == 0:
        return "no rows"
    if rows.kind == "survival":
        events = int(rows.y[:, 1].sum())
        return f"{events} events, {len(rows) - events} censored"
    if rows.kind == "binary":
        return f"{float(np.mean(rows.y)):.0%} positive"
    counts = np.bincount(rows.y.astype(np.int64), minlength=len(classes))
    return ", ".join(f"{name} {int(n)}" for name, n in zip(classes, counts, strict=False))
