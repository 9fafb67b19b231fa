"""Clinical tables split by hospital: read a CSV with a site column, prepare features per site.

Nothing is shared between sites: each site standardises its numeric columns with the mean and standard deviation
of its own training rows (its test rows use the same), so no statistic of one hospital reaches another.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from confide.errors import DataError

HEART_NUMERIC = ("age", "trestbps", "chol", "thalch", "oldpeak")
HEART_CATEGORICAL = ("sex", "cp", "fbs", "restecg", "exang")
HEART_DROPPED = ("slope", "ca", "thal")  # most hospitals did not record them


@dataclass(frozen=True)
class TableSplit:
    """One site's rows: features (n, d) float32 and binary labels (n,), for training and for testing."""

    site: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    features: tuple[str, ...]


def read_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"table {path} cannot be read: {exc}") from None
    if not rows:
        raise DataError(f"table {path} holds no rows")
    return rows


def _stratified_split(labels: np.ndarray, train_share: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of training rows: ``train_share`` of each class, chosen at random."""
    train = np.zeros(labels.size, dtype=bool)
    for value in np.unique(labels):
        rows = np.flatnonzero(labels == value)
        rng.shuffle(rows)
        train[rows[: round(train_share * rows.size)]] = True
    return train


def heart_disease(path: Path, *, seed: int = 0, train_share: float = 2 / 3) -> dict[str, TableSplit]:
    """The UCI heart-disease table by hospital (column ``dataset``): ``slope``, ``ca`` and ``thal`` dropped, then
    the rows still incomplete; label ``num > 0``; a stratified ``train_share`` of each hospital for training."""
    rows = read_rows(path)
    needed = {"dataset", "num", *HEART_NUMERIC, *HEART_CATEGORICAL}
    missing = needed - set(rows[0])
    if missing:
        raise DataError(f"table {path} lacks the columns {sorted(missing)}")
    complete = [r for r in rows if all(r[c].strip() for c in needed)]
    levels = {c: sorted({r[c] for r in complete}) for c in HEART_CATEGORICAL}
    features = [*HEART_NUMERIC, *(f"{c}={v}" for c in HEART_CATEGORICAL for v in levels[c][1:])]
    out: dict[str, TableSplit] = {}
    rng = np.random.default_rng(seed)
    for site in sorted({r["dataset"] for r in complete}):
        mine = [r for r in complete if r["dataset"] == site]
        try:
            numeric = np.array([[float(r[c]) for c in HEART_NUMERIC] for r in mine], dtype=np.float64)
            labels = np.array([int(float(r["num"])) > 0 for r in mine], dtype=np.float32)
        except ValueError as exc:
            raise DataError(f"table {path}, hospital {site}: a value is not a number: {exc}") from None
        onehot = np.array(
            [[float(r[c] == v) for c in HEART_CATEGORICAL for v in levels[c][1:]] for r in mine], dtype=np.float64
        )
        train = _stratified_split(labels, train_share, rng)
        mean = numeric[train].mean(axis=0)
        std = numeric[train].std(axis=0)
        std[std == 0] = 1.0
        x = np.concatenate([(numeric - mean) / std, onehot], axis=1).astype(np.float32)
        out[site] = TableSplit(site, x[train], labels[train], x[~train], labels[~train], tuple(features))
    return out
