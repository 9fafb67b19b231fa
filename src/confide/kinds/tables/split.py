"""Which of a site's table rows train and which test: as a ``split`` column gives them, else a seeded split.

- **Given** (:func:`given_split`): the table has the split column (``split`` unless the task names another). Each
  cell is ``train``, ``test`` or ``val`` (case and surrounding spaces ignored); anything else, an empty cell
  included, is refused, naming the file, the line and the value. Validation rows are set aside: the table task has
  no step that would use them (no early stopping, no tuning), so they neither train nor score.
- **Seeded** (:func:`stratified_split`): the site's rows, each class (for survival: events and censored) cut at the
  same share, in an order drawn from the site's own generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from confide.errors import DataError
from confide.kinds.tables.read import RawTable

SPLIT_VALUES = ("train", "test", "val")


@dataclass(frozen=True)
class GivenSplit:
    """The rows a split column keeps (file row indices, val rows left out) and which of them train."""

    rows: list[int]
    train: np.ndarray  # bool, one per kept row
    validation: int  # rows marked val, set aside


def given_split(table: RawTable, column: str, rows: list[int], site: str) -> GivenSplit:
    """The split column's word for each of ``rows``; a value other than train, test or val is refused by line."""
    at = table.index(column)
    kept: list[int] = []
    train: list[bool] = []
    validation = 0
    for i in rows:
        value = table.rows[i][at].strip().lower()
        if value not in SPLIT_VALUES:
            raise DataError(
                f"table {table.path}, site {site}, line {table.lines[i]}: column {column!r} holds "
                f"{table.rows[i][at]!r}; the split column takes train, test or val (any case)"
            )
        if value == "val":
            validation += 1
            continue
        kept.append(i)
        train.append(value == "train")
    return GivenSplit(kept, np.array(train, dtype=bool), validation)


def check_given(where: str, column: str, split: GivenSplit) -> None:
    """Refuse a site that the split column leaves without training rows or without test rows."""
    training = int(split.train.sum())
    testing = int(split.train.size - training)
    if training and testing:
        return
    absent = "training" if not training else "test"
    raise DataError(
        f"{where}: the split column {column!r} gives this site {training} train, {testing} test and "
        f"{split.validation} val rows; every site needs {absent} rows (mark some of its rows "
        f"{'train' if not training else 'test'}, or set split_column: null for a seeded split)"
    )


def stratified_split(strata: np.ndarray, train_share: float, rng: np.random.Generator) -> np.ndarray:
    """A bool mask: ``train_share`` of the rows of each stratum (rounded), drawn with ``rng``."""
    train = np.zeros(strata.shape[0], dtype=bool)
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        rng.shuffle(members)
        train[members[: round(train_share * members.size)]] = True
    return train
