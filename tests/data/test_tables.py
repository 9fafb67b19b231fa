from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from confide.data.tables import heart_disease
from confide.errors import DataError

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
