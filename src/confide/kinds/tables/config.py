"""The clinical-table task's section of a job file (``task: {name: table, ...}``).

The model's input size is the number of encoded feature columns (and, for multiclass, of classes). The job fixes
it when it lists ``features`` and the levels of every categorical column (and ``classes``); otherwise a simulation
learns it from the table (:meth:`TableTaskConfig.with_layout`) before building the model. A deployed server or site
reads no table before building it, so there the job must declare it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from confide.errors import TaskError
from confide.kinds.tables.table import TableSpec, declared_layout
from confide.tasks.python_config import Device, Precision


class TableTaskConfig(BaseModel):
    """A clinical table with one row per patient and a column naming each row's site: binary, multiclass or
    survival prediction with a linear model or a small MLP."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    name: Literal["table"] = "table"
    site_column: str = Field(default="site", description="the column naming each row's site (hospital)")
    split_column: str | None = Field(
        default="split",
        description="the column giving each row's split, used as given where the table has it: train, test or val "
        "(any case; val rows are set aside, the table task has no use for them); a site needs train and test rows, "
        "and the seed and test_fraction then play no part. Never a feature. Without the column each site's rows "
        "are split by the seed, stratified by label. null: no split column (a column of that name is then an "
        "ordinary column)",
    )
    target: str = Field(description="the label column; for survival, the time to event or censoring")
    kind: Literal["binary", "multiclass", "survival"] = "binary"
    event: str | None = Field(default=None, description="survival: the event column, 1 = event, 0 = censored")
    positive_above: float | None = Field(default=None, description="binary: a target above this is positive")
    positive: str | None = Field(default=None, description="binary: the target value that is positive")
    classes: tuple[str, ...] | None = Field(
        default=None, description="multiclass: the classes in order (default: the sorted values of the file)"
    )
    drop: tuple[str, ...] = Field(
        default=(),
        description="columns never used as features (ids, sparse columns). A column that looks like an identifier "
        "(text with a distinct value in 90 % of 20 or more rows, or distinct whole numbers in a column named like "
        "id, patient_id, PatientID, index) is refused as a feature until it is dropped",
    )
    features: tuple[str, ...] | None = Field(
        default=None,
        description="the feature columns (default: all but site, target, event and drop); when given, a column is "
        "categorical only if listed in categorical or categories",
    )
    categorical: tuple[str, ...] = Field(
        default=(), description="columns to one-hot even if numeric (levels from the file unless in categories)"
    )
    categories: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="levels of categorical columns, first = reference; give them so every site has the same layout",
    )
    missing: Literal["drop", "impute"] = Field(
        default="drop",
        description="drop: leave out rows missing a used cell; impute: each site's own training mean plus a "
        "missing-indicator column (numeric), an extra level (categorical)",
    )
    model: Literal["linear", "mlp"] = "linear"
    hidden: int = Field(default=16, ge=1, le=4096, description="MLP: units of the hidden layer")
    norm: Literal["none", "batch"] = Field(
        default="none", description="MLP: a BatchNorm layer after the hidden layer (FedBN keeps it at each site)"
    )
    lr: float = Field(default=0.05, gt=0, le=1)
    batch_size: int = Field(default=32, ge=1, le=65_536)
    optimizer: Literal["adam", "sgd"] = "adam"
    device: Device = Field(
        default="cpu",
        description="cpu (default: a table's small model trains fastest there, and results match on every "
        "machine), auto (CUDA when present), cuda or cuda:N",
    )
    precision: Precision = "float32"
    _features: tuple[str, ...] | None = PrivateAttr(default=None)  # encoded columns learnt from the table
    _classes: tuple[str, ...] | None = PrivateAttr(default=None)  # multiclass: the classes learnt from the table

    @model_validator(mode="after")
    def _consistent(self) -> TableTaskConfig:
        if self.kind == "survival" and not self.event:
            raise ValueError("a survival task needs the event column (event: ...)")
        if self.kind != "survival" and self.event:
            raise ValueError(f"event is for survival tasks, not {self.kind}")
        if self.kind != "binary" and (self.positive_above is not None or self.positive is not None):
            raise ValueError(f"positive_above and positive are for binary tasks, not {self.kind}")
        if self.positive_above is not None and self.positive is not None:
            raise ValueError("give positive_above or positive, not both")
        if self.classes is not None and self.kind != "multiclass":
            raise ValueError(f"classes are for multiclass tasks, not {self.kind}")
        if self.classes is not None and (len(self.classes) < 2 or len(set(self.classes)) != len(self.classes)):
            raise ValueError(f"classes must be 2 or more distinct values, got {list(self.classes)}")
        if self.norm == "batch" and self.model != "mlp":
            raise ValueError("norm: batch needs model: mlp (the linear model has no hidden layer)")
        outcome = {self.site_column, self.target, *([self.event] if self.event else [])}
        if len(outcome) != (3 if self.event else 2):
            raise ValueError("site_column, target and event must be different columns")
        used = outcome & {*(self.features or ()), *self.drop, *self.categorical, *self.categories}
        if used:
            raise ValueError(f"the site and outcome columns {sorted(used)} cannot be features or dropped")
        split = self.split_column
        if split is not None and split in {*outcome, *(self.features or ()), *self.categorical, *self.categories}:
            raise ValueError(
                f"column {split!r} is the split column (split_column), so it is neither an outcome nor a feature: "
                "name another split_column, or set split_column: null to read it as an ordinary column"
            )
        if split is not None and split in self.drop:
            raise ValueError(
                f"column {split!r} is the split column (split_column) and is never a feature: remove it from drop, "
                "or set split_column: null to ignore it as a split (and keep it in drop)"
            )
        return self

    def spec(self) -> TableSpec:
        """How the data layer reads the table for this task."""
        return TableSpec(
            target=self.target,
            kind=self.kind,
            site_column=self.site_column,
            split_column=self.split_column,
            event=self.event,
            positive_above=self.positive_above,
            positive=self.positive,
            classes=self.classes,
            drop=self.drop,
            features=self.features,
            categorical=self.categorical,
            categories=dict(self.categories),
            missing=self.missing,
        )

    def with_layout(self, features: tuple[str, ...], classes: tuple[str, ...] = ()) -> TableTaskConfig:
        """The config with the encoded feature columns (and multiclass classes) learnt from a simulation's table."""
        out = self.model_copy()
        out._features = tuple(features)
        out._classes = tuple(classes) if self.kind == "multiclass" else None
        return out

    def encoded_features(self) -> tuple[str, ...] | None:
        """The model's encoded input columns: learnt from the table, or as the job declares them, else None."""
        if self._features is not None:
            return self._features
        declared = declared_layout(self.spec())
        return None if declared is None else declared.features()

    def model_classes(self) -> tuple[str, ...] | None:
        """Multiclass: the classes of the model's outputs, as declared or learnt from the table, else None."""
        return self.classes or self._classes

    def require_layout(self) -> tuple[tuple[str, ...], int]:
        """The encoded feature columns and the model's number of classes (1 unless multiclass); a TaskError naming
        what to declare when neither the job nor a simulation's table gave them (a deployed server or site builds
        the model before it reads any table)."""
        features = self.encoded_features()
        if features is None:
            raise TaskError(
                "the table model's size depends on the table's encoded columns, which a deployed server or site must "
                "know before it reads any table: list features and the categories of every categorical column in "
                "the task (a simulation learns them from the table)"
            )
        if self.kind != "multiclass":
            return features, 1
        classes = self.model_classes()
        if not classes:
            raise TaskError(
                "the multiclass model's size depends on the classes, which a deployed server or site must know "
                "before it reads any table: list classes in the task (a simulation learns them from the table)"
            )
        return features, len(classes)
