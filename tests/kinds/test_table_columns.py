"""Tables read as a statistician would: identifiers refused by name, 0/1 indicators kept 0/1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from confide.errors import DataError
from confide.kinds.tables.columns import identifier_problem, named_like_identifier
from confide.kinds.tables.synthetic_survival import synthetic_survival
from confide.kinds.tables.table import TableSpec, TableSplit, load_table


def _load(tmp_path: Path, lines: list[str], spec: TableSpec) -> dict[str, TableSplit]:
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    return load_table(path, spec, seed=0, test_fraction=0.25)


def _patients(n: int, code: str) -> list[str]:
    """``n`` rows: site, a code (``code`` formatted with the row's number), a lab value, an alternating label."""
    return ["site,patient,lab,y"] + [f"S,{code.format(i)},{(i * 7) % 11},{i % 2}" for i in range(n)]


def test_a_text_column_with_one_value_per_row_is_refused_naming_it(tmp_path: Path) -> None:
    lines = _patients(40, "p{:04d}")

    with pytest.raises(DataError, match=r"column 'patient' looks like an identifier: 40 distinct values in 40 rows"):
        _load(tmp_path, lines, TableSpec(target="y"))
    dropped = _load(tmp_path, lines, TableSpec(target="y", drop=("patient",)))
    assert dropped["S"].features == ("lab",)


def test_the_generated_survival_table_is_refused_until_its_patient_column_is_dropped(tmp_path: Path) -> None:
    lines = synthetic_survival(2, 30, seed=0).strip().split("\n")

    with pytest.raises(DataError, match=r"drop: \[patient\]"):
        _load(tmp_path, lines, TableSpec(target="time", kind="survival", event="event"))


def test_a_categorical_column_with_few_levels_or_declared_levels_is_kept(tmp_path: Path) -> None:
    grades = ["site,grade,lab,y"] + [f"S,g{i % 5},{(i * 7) % 11},{i % 2}" for i in range(40)]
    listed = {"patient": tuple(f"p{i:04d}" for i in range(40))}

    few = _load(tmp_path, grades, TableSpec(target="y"))
    declared = _load(tmp_path, _patients(40, "p{:04d}"), TableSpec(target="y", categories=listed))

    assert few["S"].features == ("grade=g1", "grade=g2", "grade=g3", "grade=g4", "lab")
    assert len(declared["S"].features) == 1 + 39  # the user listed every level: taken as meant


@pytest.mark.parametrize("name", ["id", "patient_id", "PatientID", "subjectId", "record-index", "Unnamed: 0"])
def test_a_numeric_column_named_like_an_identifier_with_distinct_whole_numbers_is_refused(
    tmp_path: Path, name: str
) -> None:
    lines = [f"site,{name},lab,y"] + [f"S,{1000 + 3 * i},{i % 4},{i % 2}" for i in range(30)]

    with pytest.raises(DataError, match=rf"column '{name}' looks like an identifier.*drop: \[{name}\]"):
        _load(tmp_path, lines, TableSpec(target="y"))


def test_numbers_that_are_not_an_identifier_are_kept() -> None:
    distinct_whole = [str(i) for i in range(30)]
    repeated = [str(i % 10) for i in range(30)]

    assert identifier_problem("age", distinct_whole, categorical=False) is None  # not named like one
    assert identifier_problem("id", repeated, categorical=False) is None  # values repeat
    assert identifier_problem("id", [f"{i}.5" for i in range(30)], categorical=False) is None  # not whole
    assert identifier_problem("id", distinct_whole[:19], categorical=False) is None  # too few rows to tell
    assert not any(named_like_identifier(n) for n in ("valid", "paid", "acidity", "Idle", "width"))


def test_indicator_columns_stay_zero_one_and_continuous_columns_are_standardised(tmp_path: Path) -> None:
    lines = ["site,smoker,lab,grade,y"]
    lines += [f"S,{int(i % 3 == 0)},{10 + (i * 7) % 13},{'ab'[i % 2]},{(i // 2) % 2}" for i in range(40)]

    split = _load(tmp_path, lines, TableSpec(target="y"))["S"]

    x = np.concatenate([split.x_train, split.x_test])
    assert split.features == ("smoker", "lab", "grade=b")
    assert set(np.unique(x[:, 0]).tolist()) == {0.0, 1.0}  # the indicator as it was
    assert set(np.unique(x[:, 2]).tolist()) == {0.0, 1.0}  # the one-hot column too
    assert split.x_train[:, 1].mean() == pytest.approx(0.0, abs=1e-5)  # the lab value standardised
    assert split.x_train[:, 1].std() == pytest.approx(1.0, abs=1e-5)


def test_under_impute_indicators_and_missing_indicators_stay_in_zero_one(tmp_path: Path) -> None:
    lines = ["site,smoker,lab,y"]
    lines += [f"S,{'' if i % 5 == 0 else int(i % 3 == 0)},{'' if i % 7 == 0 else i},{i % 2}" for i in range(40)]

    split = _load(tmp_path, lines, TableSpec(target="y", missing="impute"))["S"]

    x = np.concatenate([split.x_train, split.x_test])
    assert split.features == ("smoker", "smoker:missing", "lab", "lab:missing")
    observed = x[x[:, 1] == 0, 0]
    assert set(np.unique(observed).tolist()) == {0.0, 1.0}
    filled = x[x[:, 1] == 1, 0]
    assert filled.size == 8 and np.all((filled > 0) & (filled < 1))  # the share of smokers in the training rows
    assert set(np.unique(x[:, 3]).tolist()) == {0.0, 1.0}
