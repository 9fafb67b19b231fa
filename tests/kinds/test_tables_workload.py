from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from confide.errors import DataError, TaskError
from confide.kinds.tables.config import TableTaskConfig
from confide.kinds.tables.synthetic_survival import synthetic_survival
from confide.kinds.tables.table import heart_disease
from confide.kinds.tables.workload import TableWorkload
from confide.records import Arrays

HEART = TableTaskConfig(
    site_column="dataset", target="num", kind="binary", positive_above=0, drop=("id", "slope", "ca", "thal")
)
README_ROWS = {"Cleveland": 304, "Hungary": 293, "VA Long Beach": 200, "Switzerland": 123}


def _data(root: Path, test_fraction: float = 1 / 3, sites: tuple[str, ...] = ()) -> SimpleNamespace:
    return SimpleNamespace(root=root, sites=list(sites), test_fraction=test_fraction, max_cases_per_site=None)


def _trained(start: Arrays, update: Arrays) -> Arrays:
    return Arrays.from_dict({n: start[n] + update[n] for n in start.names()})


@pytest.fixture(scope="module")
def heart_csv(shared_data: Path) -> Path:
    path = shared_data / "heart_disease" / "heart_disease_uci.csv"
    if not path.is_file():
        pytest.skip(f"heart-disease table not found at {path}")
    return path


def test_heart_disease_four_hospitals_complete_rows_stratified_two_thirds(heart_csv: Path) -> None:
    with open(heart_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    used = [c for c in rows[0] if c not in ("id", "slope", "ca", "thal")]
    complete = {site: 0 for site in README_ROWS}
    for row in rows:
        complete[row["dataset"]] += all(row[c].strip() for c in used)
    workload = TableWorkload(HEART)
    messages: list[str] = []

    sites = {s.name: s for s in workload.load_sites(_data(heart_csv), 0, messages.append)}

    assert {name: sum(r["dataset"] == name for r in rows) for name in README_ROWS} == README_ROWS
    assert complete == {"Cleveland": 304, "Hungary": 260, "VA Long Beach": 130, "Switzerland": 46}
    for name, site in sites.items():
        assert len(site.train) + len(site.test) == complete[name]
        assert len(site.skipped) == README_ROWS[name] - complete[name]
        for label in (0.0, 1.0):
            in_class = int((site.train.y == label).sum() + (site.test.y == label).sum())
            assert int((site.train.y == label).sum()) == round(2 / 3 * in_class)
        assert site.train.x.shape[1] == 13 and site.train.x.dtype == np.float32
        assert site.notes[0].startswith(f"{complete[name]} rows kept")
    assert len(messages) == 4 and workload.metric == "accuracy"
    assert workload.initial(0)["0.weight"].shape == (1, 13)


def test_the_heart_disease_wrapper_is_the_job_configuration(heart_csv: Path) -> None:
    wrapper = heart_disease(heart_csv, seed=3)

    sites = TableWorkload(HEART).load_sites(_data(heart_csv), 3, lambda _: None)

    for site in sites:
        np.testing.assert_array_equal(site.train.x, wrapper[site.name].x_train)
        np.testing.assert_array_equal(site.test.y, wrapper[site.name].y_test)


def test_a_site_given_only_its_own_rows_splits_as_in_simulation(heart_csv: Path, tmp_path: Path) -> None:
    with open(heart_csv, newline="") as handle:
        lines = handle.read().splitlines()
    own = tmp_path / "cleveland.csv"
    own.write_text("\n".join([lines[0], *(line for line in lines[1:] if ",Cleveland," in line)]) + "\n")
    simulated = {s.name: s for s in TableWorkload(HEART).load_sites(_data(heart_csv), 0, lambda _: None)}

    deployed = TableWorkload(HEART).load_site(_data(heart_csv), 0, own, "Cleveland")

    np.testing.assert_array_equal(deployed.train.x, simulated["Cleveland"].train.x)
    np.testing.assert_array_equal(deployed.test.y, simulated["Cleveland"].test.y)


def test_a_pooled_and_a_federated_site_task_learn_the_heart_table(heart_csv: Path) -> None:
    workload = TableWorkload(HEART)
    sites = workload.load_sites(_data(heart_csv), 0, lambda _: None)
    start = workload.initial(0)
    pooled = workload.pool([s.train for s in sites])
    task = workload.task(pooled, None, site="pooled", seed=0, dp_sgd=None)

    trained = _trained(start, task.train(start, {"local_steps": 150}, round=1).update)

    assert workload.size(pooled) == sum(len(s.train) for s in sites)
    cleveland = next(s for s in sites if s.name == "Cleveland")
    assert task.score(trained, cleveland.test)["accuracy"] > 0.7
    assert task.score(start, cleveland.test)["accuracy"] < task.score(trained, cleveland.test)["accuracy"]


def test_a_survival_workload_learns_the_synthetic_risk(tmp_path: Path) -> None:
    path = tmp_path / "survival.csv"
    path.write_text(synthetic_survival(3, 150, seed=0))
    config = TableTaskConfig(target="time", kind="survival", event="event", drop=("patient",), lr=0.02)
    workload = TableWorkload(config)
    sites = workload.load_sites(_data(path, 0.3), 0, lambda _: None)
    start = workload.initial(0)
    task = workload.task(workload.pool([s.train for s in sites]), None, site="pooled", seed=0, dp_sgd=None)

    trained = _trained(start, task.train(start, {"local_steps": 200, "batch_size": 64}, round=1).update)

    w = dict(zip(workload.features or (), trained["0.weight"][0], strict=True))
    assert workload.metric == "c_index" and workload.metric_keys == ("c_index", "cox_loss")
    assert w["age"] > 0.3 and w["marker"] < -0.3 and abs(w["noise"]) < 0.2 and w["stage=III"] > w["stage=II"] > 0
    assert all(task.score(trained, s.test)["c_index"] > 0.65 for s in sites)
    assert "events" in sites[0].notes[1]


def test_the_model_size_comes_from_the_config_or_the_loaded_table(tmp_path: Path) -> None:
    declared = TableTaskConfig(target="y", features=("a", "g"), categories={"g": ("x", "y", "z")}, missing="impute")
    open_layout = TableTaskConfig(target="y")

    assert TableWorkload(declared).initial(0)["0.weight"].shape == (1, 5)  # a, a:missing, g=y, g=z, g=(missing)
    with pytest.raises(TaskError, match="load the sites first"):
        TableWorkload(open_layout).initial(0)


def test_a_site_whose_layout_differs_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("site,g,y\n" + "".join(f"A,{'xyz'[i % 3]},{i % 2}\n" for i in range(12)))
    other = tmp_path / "b.csv"
    other.write_text("site,g,y\n" + "".join(f"B,{'xy'[i % 2]},{i // 6}\n" for i in range(12)))
    workload = TableWorkload(TableTaskConfig(target="y"))
    workload.load_site(_data(path), 0, path, "A")

    with pytest.raises(DataError, match="declare features and the categories"):
        workload.load_site(_data(other), 0, other, "B")


def test_a_multiclass_workload_knows_its_classes(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 2))
    grade = np.where(x[:, 0] > 0.5, "high", np.where(x[:, 0] < -0.5, "low", "mid"))
    rows = [f"{'AB'[i % 2]},{x[i, 0]:.3f},{x[i, 1]:.3f},{grade[i]}" for i in range(90)]
    path.write_text("site,a,b,grade\n" + "\n".join(rows) + "\n")
    config = TableTaskConfig(target="grade", kind="multiclass", classes=("low", "mid", "high"), model="mlp")
    workload = TableWorkload(config)

    sites = workload.load_sites(_data(path), 0, lambda _: None)
    task = workload.task(sites[0].train, sites[0].test, site="A", seed=0, dp_sgd=None)
    result = task.evaluate(workload.initial(0), {}, round=1)

    assert workload.initial(0)["2.weight"].shape == (3, 16)
    assert set(result.metrics) == {"accuracy", "balanced_accuracy", "cohen_kappa"}
    assert "low" in sites[0].notes[1] and workload.norm_names() == frozenset()


def test_the_task_config_refuses_inconsistent_fields() -> None:
    with pytest.raises(ValueError, match="event column"):
        TableTaskConfig(target="t", kind="survival")
    with pytest.raises(ValueError, match="norm: batch needs model: mlp"):
        TableTaskConfig(target="y", norm="batch")
    with pytest.raises(ValueError, match="cannot be features or dropped"):
        TableTaskConfig(target="y", drop=("y",))
    assert TableWorkload(TableTaskConfig(target="y", model="mlp", norm="batch")).norm_names() == frozenset(
        {"1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"}
    )
