"""The clinical-table workload: one CSV whose site column names each row's hospital (``data.root`` is its path).

Each site prepares its own rows (see :mod:`confide.kinds.tables.table`: standardisation and imputation from its own
training rows only). The pooled baseline concatenates the sites' training splits as each site prepared them (each
standardised with its own statistics), which is what pooling the sites' prepared data would give; no statistic of
the pooled table is computed.

The model's input size depends on the table's layout. It is fixed by the task config when it lists ``features`` and
the levels of every categorical column; otherwise the workload learns it from the first table it loads, and refuses a
later site whose layout differs (declare the levels so that every site encodes the same columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from confide.errors import DataError, TaskError
from confide.kinds.tables.config import TableTaskConfig
from confide.kinds.tables.table import TableRows, TableSplit, declared_layout, load_table
from confide.kinds.tables.tabular import METRIC_KEYS, TabularTask, build_table_model, outputs_for, table_initial
from confide.privacy.config import DpSgdSpec
from confide.records import Arrays
from confide.tasks.local_rules import norm_state_names
from confide.workloads.base import Progress, SiteSplit, Skipped

MAX_SKIPPED_LISTED = 100


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


class TableWorkload:
    """Binary, multiclass or survival prediction on a clinical table, one hospital per site."""

    def __init__(self, config: TableTaskConfig) -> None:
        self.config = config
        self.spec = config.spec()
        self.metric = "c_index" if config.kind == "survival" else "accuracy"
        self.metric_keys = METRIC_KEYS[config.kind]
        declared = declared_layout(self.spec)
        self.features: tuple[str, ...] | None = None if declared is None else declared.features()
        self.classes: tuple[str, ...] = tuple(config.classes or ())

    def load_sites(self, data: Any, seed: int, progress: Progress) -> list[SiteSplit]:
        splits = load_table(
            Path(data.root),
            self.spec,
            seed=seed,
            test_fraction=float(data.test_fraction),
            sites=list(data.sites) or None,
            max_rows=data.max_cases_per_site,
        )
        out = []
        for name, split in splits.items():
            out.append(self._site_split(split))
            progress(f"{name}: {len(split.y_train)} training and {len(split.y_test)} test rows")
        return out

    def load_site(self, data: Any, seed: int, root: Path, name: str) -> SiteSplit:
        """The rows of ``root`` (a CSV: the whole table or only this site's rows) whose site column is ``name``."""
        if Path(root).is_dir():
            raise DataError(f"the table task reads a CSV file; {root} is a folder")
        splits = load_table(
            Path(root),
            self.spec,
            seed=seed,
            test_fraction=float(data.test_fraction),
            sites=[name],
            max_rows=data.max_cases_per_site,
        )
        return self._site_split(splits[name])

    def _site_split(self, split: TableSplit) -> SiteSplit:
        if self.features is None:
            self.features = split.features
        elif split.features != self.features:
            raise DataError(
                f"site {split.site} encodes the features {list(split.features)}, the model expects "
                f"{list(self.features)}: declare features and the categories of every categorical column in the task"
            )
        if self.config.kind == "multiclass":
            if self.classes and split.classes != self.classes:
                raise DataError(f"site {split.site} has the classes {split.classes}, the model {self.classes}")
            self.classes = split.classes
        dropped = split.dropped
        skipped = [Skipped(f"line {line}", reason) for line, reason in dropped[:MAX_SKIPPED_LISTED]]
        if len(dropped) > MAX_SKIPPED_LISTED:
            skipped.append(Skipped(f"{len(dropped) - MAX_SKIPPED_LISTED} more rows", "missing values"))
        kept = len(split.y_train) + len(split.y_test)
        notes: tuple[str, ...] = (
            f"{kept} rows kept, {len(dropped)} dropped (missing values, missing: {self.config.missing})",
            f"train {len(split.y_train)} ({balance(split.train, split.classes)}), "
            f"test {len(split.y_test)} ({balance(split.test, split.classes)})",
        )
        if split.validation:
            notes += (
                f"{split.validation} rows marked val set aside (the table task neither trains on nor scores them)",
            )
        return SiteSplit(split.site, split.train, split.test, tuple(skipped), notes)

    def pool(self, parts: Sequence[Any]) -> TableRows:
        """The sites' training rows as one table, each standardised with its own site's statistics."""
        return TableRows.concat(list(parts))

    def size(self, split: Any) -> int:
        return len(split)

    def task(self, train: Any, test: Any, *, site: str, seed: int, dp_sgd: DpSgdSpec | None) -> TabularTask:
        c = self.config
        return TabularTask(
            train.x,
            train.y,
            None if test is None else test.x,
            None if test is None else test.y,
            site=site,
            model=c.model,
            seed=seed,
            dp_sgd=dp_sgd,
            kind=c.kind,
            classes=len(self.classes) if c.kind == "multiclass" and self.classes else None,
            hidden=c.hidden,
            norm=c.norm,
            lr=c.lr,
            batch_size=c.batch_size,
        )

    def initial(self, seed: int) -> Arrays:
        if self.features is None:
            raise TaskError(
                "the table model's size depends on the table's columns: load the sites first, or list features and "
                "the categories of every categorical column in the task"
            )
        if self.config.kind == "multiclass" and not self.classes:
            raise TaskError("the multiclass model's size depends on the classes: load the sites or list classes")
        c = self.config
        classes = len(self.classes) if c.kind == "multiclass" else 2
        return table_initial(
            len(self.features), c.model, seed, kind=c.kind, classes=classes, hidden=c.hidden, norm=c.norm
        )

    def norm_names(self) -> frozenset[str]:
        c = self.config
        outputs = outputs_for(c.kind, max(2, len(self.classes)))
        return norm_state_names(build_table_model(1, c.model, c.hidden, outputs=outputs, norm=c.norm))

    def batch_size(self) -> int:
        return self.config.batch_size

    def describe(self) -> str:
        c = self.config
        model = f"MLP ({c.hidden} hidden{', BatchNorm' if c.norm == 'batch' else ''})" if c.model == "mlp" else "linear"
        what = {
            "binary": "binary classification",
            "multiclass": "multiclass classification",
            "survival": "survival (Cox)",
        }
        size = f"{len(self.features)} features" if self.features is not None else "features from the table"
        return f"clinical table, {what[c.kind]} of {c.target!r}, {model} model, {size}, missing values: {c.missing}"

    def lr(self) -> float:
        return self.config.lr
