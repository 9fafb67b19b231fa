from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from confide.errors import DataError
from confide.kinds.tables.synthetic_survival import HEADER as SURVIVAL_HEADER
from confide.kinds.tables.synthetic_survival import synthetic_survival
from confide.kinds.tables.table import TableSpec, TableSplit, heart_disease, load_table

HEADER = "id,age,sex,dataset,cp,trestbps,chol,fbs,restecg,thalch,exang,oldpeak,slope,ca,thal,num\n"


def _row(i: int, site: str, age: float, num: int, chol: str = "200") -> str:
    return f"{i},{age},Male,{site},asymptomatic,120,{chol},FALSE,normal,150,FALSE,1.0,,,,{num}\n"


def test_each_site_is_standardised_with_its_own_training_rows_only(tmp_path: Path) -> None:
    rows = [_row(i, "A", 40 + i, i % 2) for i in range(12)] + [_row(100 + i, "B", 70 + i, i % 2) for i in range(12)]
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "".join(rows) + _row(999, "B", 50, 1, chol=""))  # an incomplete row is dropped

    splits = heart_disease(path, seed=0)

    for split in splits.values():
        assert split.x_train.shape == (8, len(split.features)) and split.x_test.shape == (4, len(split.features))
        np.testing.assert_allclose(split.x_train[:, 0].mean(), 0.0, atol=1e-5)  # age centred on this site's rows
        assert split.y_train.mean() == pytest.approx(0.5)  # stratified: 2/3 of each class
    assert "slope" not in splits["A"].features
    assert splits["B"].dropped == ((26, "no value for chol"),)  # the header is line 1


def test_a_table_without_the_needed_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("id,age,dataset\n1,50,A\n")

    with pytest.raises(DataError, match="lacks the columns"):
        heart_disease(path)


def test_the_real_four_hospital_table_splits_two_thirds_per_hospital(shared_data: Path) -> None:
    splits = heart_disease(shared_data / "heart_disease" / "heart_disease_uci.csv", seed=0)

    assert sorted(splits) == ["Cleveland", "Hungary", "Switzerland", "VA Long Beach"]
    for split in splits.values():
        share = len(split.y_train) / (len(split.y_train) + len(split.y_test))
        assert share == pytest.approx(2 / 3, abs=0.03)


# a generic table: two hospitals, a numeric lab value, a categorical grade, a binary outcome
SPEC = TableSpec(target="y", site_column="hospital", categories={"grade": ("low", "mid", "high")})


def _generic(a_values: list[float], b_values: list[float], grade_b: str = "mid") -> str:
    lines = ["hospital,lab,grade,y"]
    lines += [f"A,{v},{('low', 'mid', 'high')[i % 3]},{i % 2}" for i, v in enumerate(a_values)]
    lines += [f"B,{v},{grade_b},{i % 2}" for i, v in enumerate(b_values)]
    return "\n".join(lines) + "\n"


def _load(
    tmp_path: Path, text: str, spec: TableSpec = SPEC, *, seed: int = 0, sites: list[str] | None = None
) -> dict[str, TableSplit]:
    path = tmp_path / "t.csv"
    path.write_text(text)
    return load_table(path, spec, seed=seed, test_fraction=1 / 3, sites=sites)


def _affine(split: TableSplit, raw: np.ndarray, column: int) -> tuple[float, float, np.ndarray]:
    """(mean, std, raw training values) the site used: every row's standardised value is (raw - mean) / std."""
    z = np.concatenate([split.x_train[:, column], split.x_test[:, column]])
    slope, intercept = np.polyfit(np.sort(raw), np.sort(z), 1)
    std, mean = 1 / slope, -intercept / slope
    return mean, std, split.x_train[:, column] * std + mean


def test_standardisation_uses_the_sites_training_rows_and_nothing_else(tmp_path: Path) -> None:
    a = [float(v) for v in (np.arange(18) ** 1.5)]
    splits = _load(tmp_path, _generic(a, [500.0 + v for v in range(9)]))

    mean, std, train_raw = _affine(splits["A"], np.array(a), 0)

    assert (mean, std) == (pytest.approx(train_raw.mean(), abs=1e-3), pytest.approx(train_raw.std(), abs=1e-3))
    assert abs(mean - np.mean(a)) > 0.1  # not the mean of all the site's rows, test rows included
    # the test rows' values do not reach the training features: change every test row, keep the training rows
    in_test = np.abs(np.array(a)[:, None] - train_raw[None, :]).min(axis=1) > 1e-2
    assert in_test.sum() == len(splits["A"].y_test)
    changed = [v * 100 if test else v for v, test in zip(a, in_test, strict=True)]
    again = _load(tmp_path, _generic(changed, [500.0 + v for v in range(9)]))
    np.testing.assert_allclose(again["A"].x_train, splits["A"].x_train, atol=1e-6)
    assert not np.allclose(again["A"].x_test, splits["A"].x_test)


def test_another_sites_rows_do_not_change_this_sites_features_or_split(tmp_path: Path) -> None:
    a = [float(v) for v in range(18)]
    before = _load(tmp_path, _generic(a, [1.0] * 9))

    after = _load(tmp_path, _generic(a, [1000.0 + 7 * v for v in range(30)], grade_b="high"))
    alone = _load(tmp_path, _generic(a, []))

    for other in (after, alone):
        for name in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(other["A"], name), getattr(before["A"], name))
    assert not np.array_equal(after["B"].x_train, before["B"].x_train)


def test_the_split_is_stratified_seeded_and_per_site(tmp_path: Path) -> None:
    text = _generic([float(v) for v in range(30)], [float(v) for v in range(12)])

    first, same, other = _load(tmp_path, text), _load(tmp_path, text), _load(tmp_path, text, seed=1)

    assert (first["A"].y_train == 1).sum() == round(2 / 3 * 15) and (first["A"].y_train == 0).sum() == 10
    np.testing.assert_array_equal(first["A"].x_train, same["A"].x_train)
    assert not np.array_equal(first["A"].x_train, other["A"].x_train)
    assert first["A"].features == ("lab", "grade=mid", "grade=high")  # "low" is the reference level


def test_impute_fills_with_the_sites_own_training_mean_and_marks_missing_cells(tmp_path: Path) -> None:
    lines = ["hospital,lab,grade,y"]
    lines += [f"A,{'' if i % 5 == 0 else i * 1.5},{'' if i == 3 else 'low'},{i % 2}" for i in range(20)]
    lines += [f"B,{'' if i % 2 else 100 + i},mid,{i % 2}" for i in range(10)]
    spec = TableSpec(target="y", site_column="hospital", categories={"grade": ("low", "mid")}, missing="impute")

    splits = _load(tmp_path, "\n".join(lines) + "\n", spec)

    a = splits["A"]
    assert a.features == ("lab", "lab:missing", "grade=mid", "grade=(missing)")
    x = np.concatenate([a.x_train, a.x_test])
    absent = x[:, 1] == 1
    assert absent.sum() == 4 and (x[absent, 0] == 0).all()  # filled with the mean: 0 once standardised
    observed_train = a.x_train[a.x_train[:, 1] == 0, 0]
    assert observed_train.mean() == pytest.approx(0, abs=1e-5) and observed_train.std() == pytest.approx(1, abs=1e-5)
    assert x[:, 3].sum() == 1 and x[:, 2].sum() == 0  # one missing grade, no "mid" at A
    assert len(a.dropped) == 0


def test_multiclass_and_survival_targets(tmp_path: Path) -> None:
    lines = ["site,x,stage"] + [f"S,{i},{(10, 2, 1)[i % 3]}" for i in range(18)]
    spec = TableSpec(target="stage", kind="multiclass")
    survival = TableSpec(target="time", kind="survival", event="event", drop=("patient",))

    multi = _load(tmp_path, "\n".join(lines) + "\n", spec)["S"]
    surv = _load(tmp_path, synthetic_survival(2, 30, seed=1), survival)

    assert multi.classes == ("1", "2", "10")  # numeric values sort as numbers
    assert multi.y_train.dtype == np.int64 and sorted(set(multi.y_train.tolist())) == [0, 1, 2]
    assert surv["site-1"].y_train.shape == (20, 2)
    assert set(surv["site-1"].y_train[:, 1].tolist()) <= {0.0, 1.0}
    assert surv["site-1"].features == ("age", "marker", "noise", "stage=II", "stage=III")


def test_synthetic_survival_is_seeded() -> None:
    text = synthetic_survival(["x", "y"], 50, seed=3, missing=0.1)

    lines = text.strip().split("\n")

    assert text == synthetic_survival(["x", "y"], 50, seed=3, missing=0.1)
    assert text != synthetic_survival(["x", "y"], 50, seed=4, missing=0.1)
    assert lines[0] == ",".join(SURVIVAL_HEADER) and len(lines) == 101
    assert any(",," in line for line in lines[1:])


@pytest.mark.parametrize(
    ("text", "spec", "message"),
    [
        ("hospital,lab,grade,y\nA,1,low,0,9\n", SPEC, r"t\.csv, line 2: 5 fields"),
        ("hospital,lab,grade\nA,1,low\n", SPEC, r"lacks the columns \['y'\]"),
        (
            "hospital,lab,grade,y\n" + "".join(f"A,{'high' if i == 4 else i},low,{i % 2}\n" for i in range(9)),
            TableSpec(target="y", site_column="hospital", features=("lab",)),
            r"site A, line 6: column 'lab' holds 'high'",
        ),
        (
            "hospital,lab,grade,y\n" + "".join(f"A,{i},{'top' if i == 2 else 'low'},{i % 2}\n" for i in range(9)),
            SPEC,
            r"site A, line 4: column 'grade' holds 'top', which is not one of its levels",
        ),
        ("hospital,lab,grade,y\nA,1,low,0\nA,2,low,1\nA,,low,1\n", SPEC, r"site A: 2 usable rows \(1 dropped"),
        (
            "hospital,lab,grade,y\n" + "".join(f"A,{i},low,0\n" for i in range(9)),
            SPEC,
            r"site A: the training rows hold no case of the classes \['1 \(positive\)'\]",
        ),
        (
            "hospital,lab,grade,y\n" + "".join(f"A,{i},low,{'maybe' if i == 1 else 0}\n" for i in range(9)),
            SPEC,
            r"site A, line 3: target 'y' holds 'maybe'",
        ),
        (
            "site,x,time,event\n" + "".join(f"S,{i},{i + 1},0\n" for i in range(9)),
            TableSpec(target="time", kind="survival", event="event"),
            "site S: the training rows hold no event",
        ),
    ],
    ids=[
        "ragged-row",
        "no-target",
        "text-in-numeric",
        "unknown-level",
        "too-few",
        "class-absent",
        "bad-label",
        "no-event",
    ],
)
def test_bad_tables_are_refused_naming_what_and_where(tmp_path: Path, text: str, spec: TableSpec, message: str) -> None:
    with pytest.raises(DataError, match=message):
        _load(tmp_path, text, spec)


def test_an_unknown_site_is_refused_naming_the_sites(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no rows for the sites \['C'\]"):
        _load(tmp_path, _generic([float(v) for v in range(9)], [float(v) for v in range(9)]), sites=["C"])


def test_a_positive_value_names_the_positive_class_and_max_rows_caps_each_site(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("site,x,outcome\n" + "".join(f"S,{i},{'yes' if i % 3 else 'no'}\n" for i in range(30)))

    full = load_table(path, TableSpec(target="outcome", positive="yes"), seed=0, test_fraction=0.25)["S"]
    capped = load_table(path, TableSpec(target="outcome", positive="yes"), seed=0, test_fraction=0.25, max_rows=12)

    assert float(np.concatenate([full.y_train, full.y_test]).mean()) == pytest.approx(2 / 3)
    assert len(capped["S"].y_train) + len(capped["S"].y_test) == 12
