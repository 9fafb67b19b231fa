"""A site's ``labels.csv``: which image files it holds, their labels, and optionally their split and patient.

Columns (header names ignore case and spaces; other columns are ignored):

- ``file``: the image's path relative to the site folder (it must stay inside it);
- ``label``: the class, matched to the job's ``classes`` ignoring case and surrounding spaces;
- ``split`` (optional): ``train``, ``test`` or ``val`` (any case), used as given; ``val`` images are set aside;
- ``patient`` (optional): keeps a patient's images on one side of a seeded split.

An empty file name, a file listed twice, an empty label, a label outside the job's classes, or a split value other
than the three is refused as a :class:`~confide.errors.DataError` naming the file, the line and the value: a wrong
label is a wrong file, never a case to skip.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from confide.errors import DataError

LABELS_FILE = "labels.csv"
SPLITS = ("train", "test", "val")
LAYOUT = f"{LABELS_FILE} with columns file,label[,split][,patient]"


@dataclass(frozen=True)
class LabelRow:
    """One row of ``labels.csv``: its line in the file, the image, its label as written, split and patient."""

    line: int
    file: str
    label: str
    split: str | None  # train, test or val; None without a split column
    patient: str | None  # None without a patient column (or an empty cell)


@dataclass(frozen=True)
class LabelsFile:
    path: Path
    rows: tuple[LabelRow, ...]
    has_split: bool
    has_patient: bool


def _header(names: Sequence[str] | None, path: Path) -> dict[str, str]:
    """The file's own spelling of each known column (file, label, split, patient)."""
    if not names:
        raise DataError(f"{path} is empty: a site folder needs {LAYOUT}")
    found: dict[str, str] = {}
    for raw in names:
        key = (raw or "").strip().lower()
        if key in ("file", "label", "split", "patient"):
            if key in found:
                raise DataError(f"{path}: column {key!r} appears twice in the header")
            found[key] = raw
    missing = [c for c in ("file", "label") if c not in found]
    if missing:
        raise DataError(f"{path}: no column {' or '.join(missing)} (the header has {list(names)}); expected {LAYOUT}")
    return found


def _cell(row: dict[str | None, str | list[str] | None], column: str | None) -> str:
    value = row.get(column) if column is not None else None
    return value.strip() if isinstance(value, str) else ""


def read_labels(folder: Path) -> LabelsFile:
    """``folder/labels.csv``, every row checked (see the module docstring)."""
    path = folder / LABELS_FILE
    if not path.is_file():
        raise DataError(f"{folder}: no {LABELS_FILE}; a site folder holds {LAYOUT} and the images it names")
    rows: list[LabelRow] = []
    seen: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = _header(reader.fieldnames, path)
            for raw in reader:
                line = reader.line_num
                name = _cell(raw, columns["file"])
                label = _cell(raw, columns["label"])
                if not name:
                    raise DataError(f"{path}, line {line}: the file cell is empty")
                if name in seen:
                    raise DataError(f"{path}, line {line}: file {name!r} is listed again (first on line {seen[name]})")
                seen[name] = line
                if not label:
                    raise DataError(f"{path}, line {line}: file {name!r} has an empty label")
                split: str | None = None
                if "split" in columns:
                    written = _cell(raw, columns["split"])
                    split = written.lower()
                    if split not in SPLITS:
                        raise DataError(
                            f"{path}, line {line}: split {written!r} of {name!r} is not train, test or val (any case)"
                        )
                patient = _cell(raw, columns.get("patient")) or None
                rows.append(LabelRow(line, name, label, split, patient))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} cannot be read: {exc}") from None
    return LabelsFile(path, tuple(rows), "split" in columns, "patient" in columns)


def class_indices(table: LabelsFile, classes: Sequence[str]) -> np.ndarray:
    """Each row's class index in ``classes`` (ignoring case); a label outside them is refused by line."""
    index = {name.casefold(): i for i, name in enumerate(classes)}
    out = np.empty(len(table.rows), dtype=np.int64)
    for k, row in enumerate(table.rows):
        got = index.get(row.label.casefold())
        if got is None:
            raise DataError(
                f"{table.path}, line {row.line}: label {row.label!r} of {row.file!r} is not one of the job's "
                f"classes {list(classes)} (correct the file, or add the label to task.classes)"
            )
        out[k] = got
    return out


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def vocabulary(labels: Iterable[str]) -> tuple[str, ...]:
    """The distinct labels (ignoring case, the first spelling kept), in numeric order when every one is a number,
    else in alphabetical order."""
    first: dict[str, str] = {}
    for label in labels:
        first.setdefault(label.casefold(), label)
    names = list(first.values())
    numbers = [_number(n) for n in names]
    if names and all(v is not None for v in numbers):
        return tuple(n for _, n in sorted(zip(numbers, names, strict=True), key=lambda p: (p[0], p[1])))
    return tuple(sorted(names, key=lambda n: (n.casefold(), n)))


def site_folders(root: Path) -> list[Path]:
    """The sub-folders of a simulation's ``data.root`` that hold a ``labels.csv``, in name order."""
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder (it should hold one folder per site with {LAYOUT})")
    return sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / LABELS_FILE).is_file()
    )


def discover_classes(root: Path) -> tuple[tuple[str, ...], list[Path]]:
    """Every label used in the sites' ``labels.csv`` under ``root`` (see :func:`vocabulary`), and the files read."""
    tables = [read_labels(folder) for folder in site_folders(root)]
    if not tables:
        raise DataError(f"data.root {root} holds no site folder with a {LABELS_FILE}")
    found = vocabulary(row.label for table in tables for row in table.rows)
    if len(found) < 2:
        raise DataError(
            f"the sites under {root} use {len(found)} label(s) {list(found)}: a classifier needs at least two"
        )
    return found, [t.path for t in tables]
