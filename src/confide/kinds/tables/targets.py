"""A table's targets: the label column read as binary, multiclass or survival targets, and the check that a site's
training rows hold every class (for survival, an event)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from confide.errors import DataError
from confide.kinds.tables.read import RawTable, as_number, match_level

if TYPE_CHECKING:
    from confide.kinds.tables.table import Kind, TableSpec


def targets(table: RawTable, spec: TableSpec, rows: list[int], classes: tuple[str, ...], site: str) -> np.ndarray:
    at = table.index(spec.target)
    where = f"table {table.path}, site {site}"
    if spec.kind == "survival":
        assert spec.event is not None
        time = np.array([table.number(i, spec.target, site) for i in rows])
        event = np.array([table.number(i, spec.event, site) for i in rows])
        for values, name, ok in ((time, spec.target, time >= 0), (event, spec.event, np.isin(event, (0.0, 1.0)))):
            if not ok.all():
                bad = int(np.flatnonzero(~ok)[0])
                expected = "a time >= 0" if name == spec.target else "1 (event) or 0 (censored)"
                raise DataError(
                    f"{where}, line {table.lines[rows[bad]]}: column {name!r} holds {values[bad]}, expected {expected}"
                )
        return np.stack([time, event], axis=1).astype(np.float32)
    labels: list[float] = []
    for i in rows:
        value = table.rows[i][at]
        if spec.kind == "multiclass":
            k = match_level(value, classes)
            if k is None:
                raise DataError(f"{where}, line {table.lines[i]}: target {value!r} is not one of the classes {classes}")
            labels.append(k)
        elif spec.positive_above is not None:
            labels.append(float(table.number(i, spec.target, site) > spec.positive_above))
        elif spec.positive is not None:
            labels.append(float(match_level(value, (spec.positive,)) == 0))
        else:
            labels.append(_binary(value, f"{where}, line {table.lines[i]}: target {spec.target!r}"))
    return np.array(labels, dtype=np.int64 if spec.kind == "multiclass" else np.float32)


def _binary(value: str, where: str) -> float:
    if value.lower() in ("true", "false"):
        return float(value.lower() == "true")
    number = as_number(value)
    if number not in (0.0, 1.0):
        raise DataError(f"{where} holds {value!r}; a binary target is 0/1 (or set positive_above or positive)")
    return float(number)


def check_training_classes(where: str, kind: Kind, y: np.ndarray, classes: tuple[str, ...]) -> None:
    if kind == "survival":
        if not (y[:, 1] == 1).any():
            raise DataError(f"{where}: the training rows hold no event (every time is censored)")
        return
    names = classes if kind == "multiclass" else ("0 (negative)", "1 (positive)")
    absent = [name for k, name in enumerate(names) if not (y == k).any()]
    if absent:
        raise DataError(f"{where}: the training rows hold no case of the classes {absent}")
