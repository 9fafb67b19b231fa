"""A table model used after the job: each site's statistics learnt from its own training rows (the same encoding
its training used), new rows predicted with them, and what is refused."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from confide.api import Place, PredictRequest
from confide.errors import ConfigError
from confide.kinds.tables.config import TableTaskConfig
from confide.kinds.tables.predict import model_io, outputs, predict, preprocessing
from confide.kinds.tables.read import read_table
from confide.kinds.tables.site import read_site
from confide.kinds.tables.statistics import TableStatistics, encode_rows, training_rows
from confide.kinds.tables.synthetic_survival import synthetic_survival
from confide.kinds.tables.table import load_table
from confide.workloads.kind import KindWorkload
from confide.workloads.registry import make_workload

SURVIVAL = TableTaskConfig(
    target="time", kind="survival", event="event", drop=("patient",), categorical=("stage",), missing="impute"
)


@pytest.fixture()
def table(tmp_path: Path) -> Path:
    path = tmp_path / "survival.csv"
    path.write_text(synthetic_survival(3, 60, seed=0, missing=0.1))
    return path


def _place(path: Path, site: str) -> Place:
    return Place(path, site, seed=3, test_fraction=0.3)


@pytest.mark.parametrize("missing", ["impute", "drop"])
def test_a_sites_statistics_encode_its_rows_exactly_as_its_training_did(table: Path, missing: str) -> None:
    config = SURVIVAL.model_copy(update={"missing": missing})
    split = load_table(table, config.spec(), seed=3, test_fraction=0.3)["site-2"]

    stats = TableStatistics.model_validate(preprocessing(config, _place(table, "site-2")).statistics)
    raw = read_table(table)
    rows = training_rows(raw, config.spec(), "site-2", seed=3, test_fraction=0.3, max_rows=None)
    x, reasons = encode_rows(raw, rows, stats)

    assert stats.training_rows == len(split.y_train) == len(rows)
    assert stats.features == split.features
    assert all(r is None for r in reasons)
    np.testing.assert_allclose(x, split.x_train, atol=1e-6)


def test_each_site_keeps_its_own_statistics(table: Path) -> None:
    one = TableStatistics.model_validate(preprocessing(SURVIVAL, _place(table, "site-1")).statistics)
    three = TableStatistics.model_validate(preprocessing(SURVIVAL, _place(table, "site-3")).statistics)

    age_one = next(c for c in one.columns if c.name == "age")
    age_three = next(c for c in three.columns if c.name == "age")
    assert one.site == "site-1" and three.site == "site-3"
    assert age_three.mean is not None and age_one.mean is not None
    assert age_three.mean > age_one.mean + 2  # site k is older by 3 years on average


def _model(config: TableTaskConfig) -> tuple[KindWorkload, torch.nn.Module]:
    workload = make_workload(config)
    assert isinstance(workload, KindWorkload)
    torch.manual_seed(0)
    return workload, workload.network().eval()


def test_new_rows_get_the_models_risk_with_the_sites_statistics(table: Path, tmp_path: Path) -> None:
    config = SURVIVAL.with_layout(
        TableStatistics.model_validate(preprocessing(SURVIVAL, _place(table, "site-1")).statistics).features
    )
    kept = preprocessing(config, _place(table, "site-1")).statistics
    workload, model = _model(config)
    new = tmp_path / "new.csv"
    new.write_text("patient,age,marker,noise,stage\nq1,70,0.5,0.1,II\nq2,,1.0,0.0,III\nq3,50,0.2,0.3,IV\n")
    out = tmp_path / "risks.csv"

    done = predict(workload.fields, model, PredictRequest(new, out, kept))

    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    stats = TableStatistics.model_validate(kept)
    x, _ = encode_rows(read_table(new), [0, 1], stats)
    expected = model(torch.from_numpy(x)).detach().numpy()[:, 0]
    assert done.count == 2 and done.files == (out,)
    assert [r["patient"] for r in rows] == ["q1", "q2", "q3"]
    assert [float(r["risk"]) for r in rows[:2]] == pytest.approx(expected.tolist(), rel=1e-5)
    assert rows[2]["risk"] == "" and "'IV'" in rows[2]["problem"] and "levels" in rows[2]["problem"]
    assert any("1 row(s) not predicted" in note for note in done.notes)


def test_a_table_model_refuses_to_predict_without_the_sites_statistics_or_with_another_layout(
    table: Path, tmp_path: Path
) -> None:
    kept = dict(preprocessing(SURVIVAL, _place(table, "site-1")).statistics)
    config = SURVIVAL.with_layout(tuple(kept["features"]))
    workload, model = _model(config)
    other = {**kept, "features": ["age"]}

    with pytest.raises(ConfigError, match="--statistics"):
        predict(workload.fields, model, PredictRequest(table, tmp_path / "out.csv", None))
    with pytest.raises(ConfigError, match="encode the columns"):
        predict(workload.fields, model, PredictRequest(table, tmp_path / "out.csv", other))
    with pytest.raises(ConfigError, match="not a table site's statistics"):
        predict(workload.fields, model, PredictRequest(table, tmp_path / "out.csv", {"site": "x"}))


def test_binary_outputs_give_probabilities_and_the_headline_on_any_subset(tmp_path: Path) -> None:
    from confide.kinds.tables.synthetic import synthetic_binary_table

    path = tmp_path / "binary.csv"
    path.write_text(synthetic_binary_table(["a", "b"], 40, 3, seed=1))
    config = TableTaskConfig(target="y", features=("x1", "x2", "x3"))
    workload, model = _model(config)
    test = read_site(config, Place(path, "a", seed=0, test_fraction=0.5)).test

    got = outputs(config, model, test)

    with torch.no_grad():  # as Confide calls evaluate
        scored = workload.kind.evaluate(config, model, test)
    every = np.arange(got.n)
    assert got.view is not None and got.view.classes == ("negative", "positive")  # type: ignore[union-attr]
    assert got.headline(every) == pytest.approx(scored["accuracy"])
    assert model_io(config).features == ("x1", "x2", "x3") and model_io(config).example_shape == (3,)
