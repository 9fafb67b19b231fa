"""Clinical tables split by site: read a CSV with a site column, prepare each site's features and targets.

What is computed from where:

- **Per site, from its own training rows only**: the mean and standard deviation that standardise each numeric
  column (its test rows use the same), and, under ``missing: impute``, the mean that fills a missing numeric cell.
  No statistic of one site reaches another, and none comes from the test rows. The train/test split of a site
  depends only on its own rows and the seed (stratified by label; for survival by event), unless the table has a
  split column (``split`` unless the spec names another): then each row trains, tests or (``val``) is set aside as
  that column says (:mod:`confide.kinds.tables.split`), and the seed and test fraction play no part.
- **From the whole file (the schema, not statistics)**: which columns are categorical when not declared, the levels
  of a categorical column not given in ``categories``, and the classes of a multiclass target not given in
  ``classes``. In a deployment each site reads only what it is given: give every site the same levels and classes
  (``categories``, ``classes`` and an explicit ``features`` list in the job), or the one-hot layout of a site that
  lacks a level may differ from the others'. A site's value outside declared levels or classes is refused, naming
  the file, column, site and line.

Encoding: numeric columns standardised, except 0/1 indicator columns (every value 0 or 1), which stay 0/1;
categorical columns one-hot without their first level (the reference); under ``impute`` every numeric column gets a
missing-indicator column ``name:missing`` (0/1; its missing cells become the site's training mean, 0 after
standardisation) and every categorical column an extra level ``(missing)``, whether or not a site has missing cells,
so every site has the same layout. Under ``drop`` a row missing any used cell is dropped. A column that looks like an
identifier (about one value per row) is refused as a feature, naming it (:mod:`confide.kinds.tables.columns`); the
split column is never a feature.
Targets: binary (n,) float32 0/1; multiclass (n,) int64 class indices; survival (n, 2) float32 (time, event).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from confide.errors import DataError
from confide.kinds.tables.columns import identifier_problem, is_indicator
from confide.kinds.tables.read import RawTable, as_number, is_missing, match_level, read_table
from confide.kinds.tables.split import check_given, given_split, stratified_split
from confide.kinds.tables.targets import check_training_classes, targets

Kind = Literal["binary", "multiclass", "survival"]
MissingPolicy = Literal["drop", "impute"]
MISSING_LEVEL = "(missing)"


@dataclass(frozen=True)
class TableSpec:
    """How to read a table: which column names the site, the target, the features and their kinds."""

    target: str
    kind: Kind = "binary"
    site_column: str = "site"
    split_column: str | None = "split"  # train/test/val per row, used when the table has it; None: never
    event: str | None = None  # survival: 1 = event, 0 = censored
    positive_above: float | None = None  # binary: target > this is positive
    positive: str | None = None  # binary: target == this is positive
    classes: tuple[str, ...] | None = None  # multiclass: class order (default: sorted values of the file)
    drop: tuple[str, ...] = ()
    features: tuple[str, ...] | None = None  # explicit: then only declared columns are categorical
    categorical: tuple[str, ...] = ()
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    missing: MissingPolicy = "drop"
    min_rows: int = 4


@dataclass(frozen=True)
class Column:
    name: str
    levels: tuple[str, ...] | None  # None: numeric
    indicator: bool = False  # numeric with every value 0 or 1: kept 0/1, not standardised


@dataclass(frozen=True)
class Layout:
    """The encoded columns, identical at every site that has the same levels."""

    columns: tuple[Column, ...]
    missing: MissingPolicy

    def features(self) -> tuple[str, ...]:
        names: list[str] = []
        for column in self.columns:
            if column.levels is None:
                names.append(column.name)
                if self.missing == "impute":
                    names.append(f"{column.name}:missing")
            else:
                names.extend(f"{column.name}={level}" for level in column.levels[1:])
                if self.missing == "impute":
                    names.append(f"{column.name}={MISSING_LEVEL}")
        return tuple(names)


@dataclass(frozen=True)
class TableRows:
    """Rows of one split: features (n, d) float32 and targets (see the module's docstring)."""

    x: np.ndarray
    y: np.ndarray
    kind: Kind = "binary"

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @classmethod
    def concat(cls, parts: Sequence[TableRows]) -> TableRows:
        """Several sites' rows as one, each as its own site prepared (standardised) them."""
        if not parts:
            raise DataError("no table rows to pool")
        if len({p.x.shape[1] for p in parts}) != 1 or len({p.kind for p in parts}) != 1:
            raise DataError("the sites' tables differ in features or kind and cannot be pooled")
        return cls(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]), parts[0].kind)


@dataclass(frozen=True)
class TableSplit:
    """One site's rows: features (n, d) float32 and targets, for training and for testing."""

    site: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    features: tuple[str, ...]
    kind: Kind = "binary"
    classes: tuple[str, ...] = ()  # multiclass: the class of each index
    dropped: tuple[tuple[int, str], ...] = ()  # (file line, reason) of this site's rows left out
    validation: int = 0  # rows the split column marks val: set aside, neither trained on nor scored

    @property
    def train(self) -> TableRows:
        return TableRows(self.x_train, self.y_train, self.kind)

    @property
    def test(self) -> TableRows:
        return TableRows(self.x_test, self.y_test, self.kind)


def load_table(
    path: Path,
    spec: TableSpec,
    *,
    seed: int,
    test_fraction: float,
    sites: Sequence[str] | None = None,
    max_rows: int | None = None,
) -> dict[str, TableSplit]:
    """Every site of the table at ``path`` (or only ``sites``), split and prepared as the module describes."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must lie between 0 and 1, got {test_fraction}")
    table = read_table(path)
    schema = _schema(table, spec)
    split, needed, kept, layout, classes = schema.split, schema.needed, schema.kept, schema.layout, schema.classes
    by_site: dict[str, list[int]] = {}
    for i in kept:
        by_site.setdefault(table.rows[i][table.index(spec.site_column)], []).append(i)
    dropped = _dropped(table, needed, spec.site_column, set(kept))
    named = site_values(table, spec)
    wanted = list(sites) if sites else named
    unknown = [s for s in wanted if s not in named]
    if unknown:
        raise DataError(f"table {path} has no rows for the sites {unknown} (column {spec.site_column!r}: {named})")
    out: dict[str, TableSplit] = {}
    for site in wanted:
        rows, lost = by_site.get(site, []), dropped.get(site, [])
        share = 1.0 - test_fraction
        out[site] = _site_split(table, spec, layout, classes, site, rows, lost, seed, share, max_rows, split)
    return out


@dataclass(frozen=True)
class TableSchema:
    """What the whole file fixes (never a statistic): the encoded columns and, for multiclass, the classes."""

    split: str | None  # the split column, where the table has it
    needed: list[str]  # the columns a row must have a value in to be kept
    kept: list[int]  # the rows kept
    layout: Layout
    classes: tuple[str, ...]


def _schema(table: RawTable, spec: TableSpec) -> TableSchema:
    split = spec.split_column if spec.split_column in table.header else None
    columns = _feature_columns(table, spec, split)
    outcome = [spec.site_column, spec.target, *([spec.event] if spec.event else [])]
    table.require([*outcome, *columns, *spec.drop, *spec.categorical, *spec.categories])
    for name in (*spec.categorical, *spec.categories):
        if name not in columns:
            raise DataError(f"table {table.path}: column {name!r} is declared categorical but is not a feature")
    needed = outcome + (list(columns) if spec.missing == "drop" else [])
    at = [table.index(c) for c in needed]
    kept = [i for i, row in enumerate(table.rows) if not any(is_missing(row[j]) for j in at)]
    layout = Layout(tuple(_column(table, spec, name, kept) for name in columns), spec.missing)
    classes = _classes(table, spec, kept) if spec.kind == "multiclass" else ()
    return TableSchema(split, needed, kept, layout, classes)


def table_schema(path: Path, spec: TableSpec) -> TableSchema:
    """The layout and classes every site of the table at ``path`` is encoded with (as :func:`load_table` does)."""
    return _schema(read_table(path), spec)


def site_values(table: RawTable, spec: TableSpec) -> list[str]:
    """The sites the table's site column names, sorted."""
    return sorted({v for v in table.values(spec.site_column) if not is_missing(v)})


def table_sites(path: Path, spec: TableSpec) -> list[str]:
    """The sites the table at ``path`` holds rows of (its site column's values, sorted)."""
    table = read_table(path)
    table.require([spec.site_column])
    return site_values(table, spec)


def declared_layout(spec: TableSpec) -> Layout | None:
    """The layout the spec alone fixes (explicit features, levels of every categorical column), else None."""
    if spec.features is None:
        return None
    columns = []
    for name in spec.features:
        if name in spec.categories:
            columns.append(Column(name, tuple(spec.categories[name])))
        elif name in spec.categorical:
            return None
        else:
            columns.append(Column(name, None))
    return Layout(tuple(columns), spec.missing)


def _feature_columns(table: RawTable, spec: TableSpec, split: str | None) -> tuple[str, ...]:
    outcome = {spec.site_column, spec.target, *([spec.event] if spec.event else []), *([split] if split else [])}
    if spec.features is not None:
        clash = sorted(outcome & set(spec.features))
        if clash:
            raise DataError(f"table {table.path}: the features include the site, outcome or split columns {clash}")
        columns = tuple(spec.features)
    else:
        columns = tuple(h for h in table.header if h not in outcome and h not in spec.drop)
    if not columns:
        raise DataError(f"table {table.path} has no feature column left (after dropping {list(spec.drop)})")
    return columns


def _column(table: RawTable, spec: TableSpec, name: str, kept: list[int]) -> Column:
    if name in spec.categories:
        levels = tuple(spec.categories[name])
        if not levels or len(set(levels)) != len(levels):
            raise DataError(f"categories of column {name!r} must be distinct and not empty, got {list(levels)}")
        return Column(name, levels)
    at = table.index(name)
    cells = [table.rows[i][at] for i in kept if not is_missing(table.rows[i][at])]
    categorical = name in spec.categorical or (
        spec.features is None and any(as_number(v) is None for v in table.values(name) if not is_missing(v))
    )
    problem = identifier_problem(name, cells, categorical=categorical)
    if problem:
        raise DataError(f"table {table.path}: {problem}")
    if categorical:
        return Column(name, _sorted_levels(set(cells)))
    return Column(name, None, indicator=is_indicator(cells))


def _sorted_levels(values: set[str]) -> tuple[str, ...]:
    numbers = {v: as_number(v) for v in values}
    if all(n is not None for n in numbers.values()):
        return tuple(sorted(values, key=lambda v: (numbers[v], v)))
    return tuple(sorted(values))


def _classes(table: RawTable, spec: TableSpec, kept: list[int]) -> tuple[str, ...]:
    at = table.index(spec.target)
    classes = tuple(spec.classes) if spec.classes else _sorted_levels({table.rows[i][at] for i in kept})
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise DataError(f"table {table.path}: a multiclass target needs 2 or more distinct classes, got {classes}")
    return classes


def _dropped(table: RawTable, needed: list[str], site_column: str, kept: set[int]) -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = {}
    at = {c: table.index(c) for c in needed}
    for i, row in enumerate(table.rows):
        site = row[table.index(site_column)]
        if i in kept or is_missing(site):
            continue
        absent = [c for c in needed if is_missing(row[at[c]])]
        out.setdefault(site, []).append((table.lines[i], f"no value for {', '.join(absent)}"))
    return out


def _site_rng(seed: int, site: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}/{site}/table-split".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _site_split(
    table: RawTable,
    spec: TableSpec,
    layout: Layout,
    classes: tuple[str, ...],
    site: str,
    rows: list[int],
    dropped: list[tuple[int, str]],
    seed: int,
    train_share: float,
    max_rows: int | None,
    split: str | None,
) -> TableSplit:
    """One site's rows, split (as the split column gives, else seeded and stratified) and encoded."""
    where = f"table {table.path}, site {site}"
    rng = _site_rng(seed, site)
    if max_rows is not None and len(rows) > max_rows:
        rows = sorted(rng.choice(np.asarray(rows), size=max_rows, replace=False).tolist())
    given = given_split(table, split, rows, site) if split else None
    rows = given.rows if given else rows
    if len(rows) < spec.min_rows:
        raise DataError(
            f"{where}: {len(rows)} usable rows ({len(dropped)} dropped as incomplete"
            f"{f', {given.validation} marked val' if given else ''}); at least {spec.min_rows} are needed"
        )
    y = targets(table, spec, rows, classes, site)
    if given and split:
        check_given(where, split, given)
        train = given.train
    else:
        train = stratified_split(y[:, 1] if spec.kind == "survival" else y, train_share, rng)
        if train.all() or not train.any():
            raise DataError(f"{where}: {len(rows)} usable rows leave no {'test' if train.all() else 'training'} rows")
    check_training_classes(where, spec.kind, y[train], classes)
    x = _encode(table, layout, rows, train, site)
    test, features, validation = ~train, layout.features(), given.validation if given else 0
    return TableSplit(
        site, x[train], y[train], x[test], y[test], features, spec.kind, classes, tuple(dropped), validation
    )


def _encode(table: RawTable, layout: Layout, rows: list[int], train: np.ndarray, site: str) -> np.ndarray:
    impute = layout.missing == "impute"
    blocks: list[np.ndarray] = []
    for column in layout.columns:
        at = table.index(column.name)
        cells = [table.rows[i][at] for i in rows]
        absent = np.array([is_missing(c) for c in cells])
        if column.levels is None:
            values = np.array(
                [np.nan if a else table.number(i, column.name, site) for i, a in zip(rows, absent, strict=True)]
            )
            observed = values[train & ~absent]
            mean = float(observed.mean()) if observed.size else 0.0
            if column.indicator:  # stays 0/1; a missing cell takes the share of 1s in the site's training rows
                blocks.append(np.where(absent, mean, values)[:, None])
            else:
                std = float(observed.std()) if observed.size else 1.0
                z = (values - mean) / (std if std > 1e-12 else 1.0)
                z[absent] = 0.0  # the site's own training mean
                blocks.append(z[:, None])
            if impute:
                blocks.append(absent[:, None].astype(np.float64))
            continue
        levels = column.levels
        codes = np.empty(len(rows), dtype=np.int64)
        for r, (i, cell) in enumerate(zip(rows, cells, strict=True)):
            k = len(levels) if absent[r] else match_level(cell, levels)
            if k is None:
                raise DataError(
                    f"table {table.path}, site {site}, line {table.lines[i]}: column {column.name!r} holds {cell!r}, "
                    f"which is not one of its levels {list(levels)}"
                )
            codes[r] = k
        kept_levels = list(range(1, len(levels))) + ([len(levels)] if impute else [])
        blocks.append((codes[:, None] == np.array(kept_levels)[None, :]).astype(np.float64))
    return np.concatenate(blocks, axis=1).astype(np.float32)


HEART_FEATURES = ("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalch", "exang", "oldpeak")
HEART_CATEGORICAL = ("sex", "cp", "fbs", "restecg", "exang")
HEART_DROPPED = ("slope", "ca", "thal")  # most hospitals did not record them
HEART_SPEC = TableSpec(
    target="num",
    kind="binary",
    site_column="dataset",
    positive_above=0.0,
    features=HEART_FEATURES,
    categorical=HEART_CATEGORICAL,
    missing="drop",
)


def heart_disease(path: Path, *, seed: int = 0, train_share: float = 2 / 3) -> dict[str, TableSplit]:
    """The UCI heart-disease table by hospital (column ``dataset``): ``slope``, ``ca`` and ``thal`` left out, then
    the rows still incomplete; label ``num > 0``; a stratified ``train_share`` of each hospital for training.
    The same as the generic reader with ``drop: [id, slope, ca, thal]`` (see jobs/heart_disease.yaml)."""
    return load_table(path, HEART_SPEC, seed=seed, test_fraction=1.0 - train_share)
