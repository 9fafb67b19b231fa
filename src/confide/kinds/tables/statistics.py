"""A site's table statistics, kept beside its copy of the model, and new rows encoded with them.

:func:`site_statistics` learns, from the site's own training rows only (the rows :func:`confide.kinds.tables.table.
load_table` trains on: the same split column or seeded split, the same ``max_rows``), what its encoding used: each
numeric column's mean (the value a missing cell takes under ``missing: impute``) and the standard deviation it is
divided by (1 where it is 0), which 0/1 columns stay 0/1, each categorical column's levels (first = reference).
They are the site's and stay there (``preprocessing.json`` beside the site's model).

:func:`encode_rows` encodes rows of another table (new patients) with them, exactly as the site encoded its own
training rows; a row that cannot be encoded (a missing cell under ``missing: drop``, an unknown level, text in a
numeric column) gets its reason instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from confide.errors import DataError
from confide.kinds.tables.read import RawTable, as_number, is_missing, match_level, read_table
from confide.kinds.tables.split import given_split, stratified_split
from confide.kinds.tables.table import MISSING_LEVEL, Column, Layout, TableSpec, _schema, _site_rng
from confide.kinds.tables.targets import targets

STD_FLOOR = 1e-12
"""A standard deviation at or below this divides by 1 (the column is constant in the training rows)."""


class ColumnStatistics(BaseModel):
    """One column of the encoding: a numeric column's training mean and divisor, or a categorical one's levels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    levels: tuple[str, ...] | None = Field(default=None, description="categorical: the levels, first = reference")
    indicator: bool = Field(default=False, description="numeric 0/1 column: kept 0/1, not standardised")
    mean: float | None = Field(default=None, description="numeric: the training rows' mean (imputed value)")
    scale: float | None = Field(default=None, description="numeric, not 0/1: what (value - mean) is divided by")


class TableStatistics(BaseModel):
    """Everything a site's encoding learnt from its own training rows (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str
    missing: Literal["drop", "impute"]
    training_rows: int
    columns: tuple[ColumnStatistics, ...]
    features: tuple[str, ...] = Field(description="the encoded columns, in the model's input order")

    def layout(self) -> Layout:
        return Layout(
            tuple(Column(c.name, c.levels, indicator=c.indicator) for c in self.columns),
            self.missing,
        )


def training_rows(
    table: RawTable, spec: TableSpec, site: str, *, seed: int, test_fraction: float, max_rows: int | None
) -> list[int]:
    """The file rows ``site`` trains on, chosen as :func:`confide.kinds.tables.table.load_table` chooses them."""
    schema = _schema(table, spec)
    at = table.index(spec.site_column)
    rows = [i for i in schema.kept if table.rows[i][at] == site]
    if not rows:
        raise DataError(f"table {table.path} has no usable rows for site {site!r} (column {spec.site_column!r})")
    rng = _site_rng(seed, site)
    if max_rows is not None and len(rows) > max_rows:
        rows = sorted(rng.choice(np.asarray(rows), size=max_rows, replace=False).tolist())
    if schema.split:
        given = given_split(table, schema.split, rows, site)
        return [i for i, train in zip(given.rows, given.train, strict=True) if train]
    y = targets(table, spec, rows, schema.classes, site)
    train = stratified_split(y[:, 1] if spec.kind == "survival" else y, 1.0 - test_fraction, rng)
    return [i for i, keep in zip(rows, train, strict=True) if keep]


def site_statistics(
    path: Path, spec: TableSpec, site: str, *, seed: int, test_fraction: float, max_rows: int | None = None
) -> TableStatistics:
    """``site``'s statistics, learnt from its own training rows of the table at ``path``."""
    table = read_table(Path(path))
    layout = _schema(table, spec).layout
    rows = training_rows(table, spec, site, seed=seed, test_fraction=test_fraction, max_rows=max_rows)
    columns: list[ColumnStatistics] = []
    for column in layout.columns:
        if column.levels is not None:
            columns.append(ColumnStatistics(name=column.name, levels=column.levels))
            continue
        at = table.index(column.name)
        observed = np.array(
            [table.number(i, column.name, site) for i in rows if not is_missing(table.rows[i][at])], dtype=np.float64
        )
        mean = float(observed.mean()) if observed.size else 0.0
        if column.indicator:
            columns.append(ColumnStatistics(name=column.name, indicator=True, mean=mean))
            continue
        std = float(observed.std()) if observed.size else 1.0
        columns.append(ColumnStatistics(name=column.name, mean=mean, scale=std if std > STD_FLOOR else 1.0))
    return TableStatistics(
        site=site, missing=layout.missing, training_rows=len(rows), columns=tuple(columns), features=layout.features()
    )


def _numeric(cell: str, column: ColumnStatistics, impute: bool) -> tuple[list[float], str | None]:
    """A numeric cell's encoded values (the value, then its missing indicator under impute), or why it cannot be."""
    mean = float(column.mean if column.mean is not None else 0.0)
    if is_missing(cell):
        if not impute:
            return [], f"no value for {column.name} (the model was trained with missing: drop)"
        return [mean if column.indicator else 0.0, 1.0], None
    number = as_number(cell)
    if number is None:
        return [], f"column {column.name!r} holds {cell!r}, which is not a finite number"
    value = number if column.indicator else (number - mean) / float(column.scale or 1.0)
    return [value, 0.0] if impute else [value], None


def _categorical(cell: str, levels: tuple[str, ...], name: str, impute: bool) -> tuple[list[float], str | None]:
    kept = len(levels) - 1 + (1 if impute else 0)
    if is_missing(cell):
        if not impute:
            return [], f"no value for {name} (the model was trained with missing: drop)"
        return [0.0] * (len(levels) - 1) + [1.0], None
    k = match_level(cell, levels)
    if k is None:
        return [], f"column {name!r} holds {cell!r}, which is not one of its levels {list(levels)}"
    out = [0.0] * kept
    if k > 0:
        out[k - 1] = 1.0
    return out, None


def encode_rows(table: RawTable, rows: list[int], stats: TableStatistics) -> tuple[np.ndarray, list[str | None]]:
    """``rows`` of ``table`` encoded with ``stats``: (n, features) float32, NaN in a row that cannot be encoded,
    and each row's reason (None where it was encoded)."""
    table.require([c.name for c in stats.columns])
    impute = stats.missing == "impute"
    x = np.full((len(rows), len(stats.features)), np.nan, dtype=np.float32)
    reasons: list[str | None] = []
    at = {c.name: table.index(c.name) for c in stats.columns}
    for r, i in enumerate(rows):
        values: list[float] = []
        reason: str | None = None
        for column in stats.columns:
            cell = table.rows[i][at[column.name]]
            if column.levels is None:
                got, reason = _numeric(cell, column, impute)
            else:
                got, reason = _categorical(cell, column.levels, column.name, impute)
            if reason is not None:
                break
            values.extend(got)
        if reason is None:
            x[r] = np.asarray(values, dtype=np.float32)
        reasons.append(reason)
    return x, reasons


__all__ = ["MISSING_LEVEL", "ColumnStatistics", "TableStatistics", "encode_rows", "site_statistics", "training_rows"]
