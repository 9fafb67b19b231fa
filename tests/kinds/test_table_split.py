"""A table's own split column: used as given, per site, checked by value and by site; never a feature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from confide.config import parse_job
from confide.errors import ConfigError, DataError
from confide.kinds.tables.table import TableSpec, TableSplit, load_table

SPEC = TableSpec(target="y", site_column="hospital")


def _table(tmp_path: Path, rows: list[str], header: str = "hospital,lab,split,y") -> Path:
    path = tmp_path / "t.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _rows(site: str, n: int, split: str = "", *, start: int = 0) -> list[str]:
    """``n`` rows of ``site``: lab value = the row's number, alternating labels; split by ``split`` or by i % 3."""
    words = ("train", "TRAIN ", "Test")  # any case, spaces around
    return [f"{site},{start + i},{split or words[i % 3]},{i % 2}" for i in range(n)]


def _load(path: Path, spec: TableSpec = SPEC, **options: object) -> dict[str, TableSplit]:
    return load_table(path, spec, seed=0, test_fraction=0.5, **options)  # type: ignore[arg-type]


def test_the_split_column_decides_each_row_whatever_the_seed_and_test_fraction(tmp_path: Path) -> None:
    path = _table(tmp_path, _rows("A", 30) + _rows("B", 12, start=100))

    first = _load(path)
    other = load_table(path, SPEC, seed=7, test_fraction=0.2)

    for site, start, n in (("A", 0, 30), ("B", 100, 12)):
        z = np.concatenate([first[site].x_train[:, 0], first[site].x_test[:, 0]])
        raw = np.array([start + i for i in range(n) if i % 3 < 2] + [start + i for i in range(n) if i % 3 == 2])
        fit = np.polyfit(raw, z, 1)  # one increasing affine map (the standardisation) takes each row's lab to its
        np.testing.assert_allclose(z, np.polyval(fit, raw), atol=1e-4)  # feature: the rows were split as given
        assert fit[0] > 0 and len(first[site].x_test) == n // 3
        np.testing.assert_array_equal(first[site].x_train, other[site].x_train)
    assert first["A"].features == ("lab",)  # the split column is not a feature


def test_val_rows_are_set_aside_and_counted(tmp_path: Path) -> None:
    rows = _rows("A", 24) + [f"A,{50 + i},val,{i % 2}" for i in range(5)]
    path = _table(tmp_path, rows)

    split = _load(path)["A"]

    assert (len(split.x_train), len(split.x_test), split.validation) == (16, 8, 5)


def test_without_the_column_the_rows_are_split_by_the_seed(tmp_path: Path) -> None:
    path = _table(tmp_path, [f"A,{i},{i % 2}" for i in range(30)], header="hospital,lab,y")

    split = _load(path)["A"]

    assert len(split.x_test) == 14 and split.validation == 0  # each class of 15 trains round(7.5) = 8


def test_a_bad_split_value_is_refused_naming_file_line_and_value(tmp_path: Path) -> None:
    rows = _rows("A", 12)
    rows[4] = "A,4,training,0"
    path = _table(tmp_path, rows)

    with pytest.raises(DataError, match=r"t\.csv, site A, line 6: column 'split' holds 'training'"):
        _load(path)


def test_an_empty_split_cell_is_refused_by_line(tmp_path: Path) -> None:
    rows = _rows("A", 12)
    rows[0] = "A,0,,0"
    path = _table(tmp_path, rows)

    with pytest.raises(DataError, match=r"line 2: column 'split' holds ''"):
        _load(path)


@pytest.mark.parametrize(("word", "absent"), [("train", "test"), ("test", "training")])
def test_a_site_without_training_or_test_rows_is_refused_by_name(tmp_path: Path, word: str, absent: str) -> None:
    path = _table(tmp_path, _rows("A", 12) + _rows("B", 12, split=word, start=100))

    with pytest.raises(DataError, match=rf"site B: the split column 'split' gives .* every site needs {absent} rows"):
        _load(path)


def test_another_name_and_null_are_honoured(tmp_path: Path) -> None:
    path = _table(tmp_path, _rows("A", 30), header="hospital,lab,fold,y")

    named = _load(path, TableSpec(target="y", site_column="hospital", split_column="fold"))
    ignored = _load(path, TableSpec(target="y", site_column="hospital", split_column=None, drop=("fold",)))

    assert len(named["A"].x_test) == 10 and named["A"].features == ("lab",)
    assert len(ignored["A"].x_test) == 14  # seeded: each class of 15 trains round(7.5) = 8


def test_the_task_config_keeps_the_split_column_out_of_the_features() -> None:
    base = {"data": {"root": "x"}}

    default = parse_job({**base, "task": {"name": "table", "target": "y"}})
    off = parse_job({**base, "task": {"name": "table", "target": "y", "split_column": None}})

    assert default.task.spec().split_column == "split"  # type: ignore[union-attr]
    assert off.task.spec().split_column is None  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"task\.split_column|column 'split' is the split column"):
        parse_job({**base, "task": {"name": "table", "target": "y", "features": ["lab", "split"]}})
    with pytest.raises(ConfigError, match="remove it from drop"):
        parse_job({**base, "task": {"name": "table", "target": "y", "drop": ["split"]}})


def test_the_report_notes_say_how_many_val_rows_were_set_aside(tmp_path: Path) -> None:
    from confide.kinds.tables.config import TableTaskConfig
    from confide.workloads.registry import make_workload

    path = _table(tmp_path, _rows("A", 24) + [f"A,{50 + i},val,{i % 2}" for i in range(5)])
    workload = make_workload(TableTaskConfig(target="y", site_column="hospital"))

    (site,) = workload.load_sites(parse_job({"data": {"root": str(path)}}).data, 0, lambda _: None)

    assert any("5 rows marked val set aside" in note for note in site.notes)
