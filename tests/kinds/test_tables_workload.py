"""The table task as a job runs it: the registry's workload on a CSV whose site column names each row's hospital."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from confide.errors import DataError, TaskError
from confide.kinds.tables.config import TableTaskConfig
from confide.kinds.tables.synthetic_survival import synthetic_survival
from confide.kinds.tables.table import heart_disease
from confide.records import Arrays
from confide.workloads.kind import KindWorkload
from confide.workloads.registry import make_workload

HEART = TableTaskConfig(
    site_column="dataset", target="num", kind="binary", positive_above=0, drop=("id", "slope", "ca", "thal")
)
DECLARED = TableTaskConfig.model_validate(  # as jobs/heart_disease.yaml: what a deployed site must be told
    {
        **HEART.model_dump(),
        "drop": ("id", "slope", "ca", "thal"),
        "features": ("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalch", "exang", "oldpeak"),
        "categories": {
            "sex": ("Female", "Male"),
            "cp": ("asymptomatic", "atypical angina", "non-anginal", "typical angina"),
            "fbs": ("FALSE", "TRUE"),
            "restecg": ("lv hypertrophy", "normal", "st-t abnormality"),
            "exang": ("FALSE", "TRUE"),
        },
    }
)
README_ROWS = {"Cleveland": 304, "Hungary": 293, "VA Long Beach": 200, "Switzerland": 123}


def _data(root: Path, test_fraction: float = 1 / 3, sites: tuple[str, ...] = ()) -> SimpleNamespace:
    return SimpleNamespace(
        root=root, sites=list(sites), test_fraction=test_fraction, max_cases_per_site=None, on_bad_case="skip"
    )


def _workload(config: TableTaskConfig) -> KindWorkload:
    workload = make_workload(config)
    assert isinstance(workload, KindWorkload)
    return workload


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
    workload = _workload(HEART)
    messages: list[str] = []

    sites = {s.name: s for s in workload.load_sites(_data(heart_csv), 0, messages.append)}

    assert {name: sum(r["dataset"] == name for r in rows) for name in README_ROWS} == README_ROWS
    assert complete == {"Cleveland": 304, "Hungary": 260, "VA Long Beach": 130, "Switzerland": 46}
    for name, site in sites.items():
        assert len(site.train) + len(site.test) == complete[name]
        assert len(site.skipped) == README_ROWS[name] - complete[name]
        (x, y), (_, test_y) = site.train.tensors, site.test.tensors
        for label in (0.0, 1.0):
            in_class = int((y == label).sum() + (test_y == label).sum())
            assert int((y == label).sum()) == round(2 / 3 * in_class)
        assert x.shape[1] == 13 and x.dtype == torch.float32 and y.dtype == torch.float32
        assert site.notes[0].startswith(f"{complete[name]} rows kept")
    each = [f"{n}: {len(sites[n].train)} training and {len(sites[n].test)} test examples" for n in sorted(sites)]
    assert messages == ["preparing the data", *each] and workload.metric == "accuracy"
    assert workload.initial(0)["0.weight"].shape == (1, 13)


def test_the_heart_disease_wrapper_is_the_job_configuration(heart_csv: Path) -> None:
    wrapper = heart_disease(heart_csv, seed=3)

    sites = _workload(HEART).load_sites(_data(heart_csv), 3, lambda _: None)

    for site in sites:
        np.testing.assert_array_equal(site.train.tensors[0].numpy(), wrapper[site.name].x_train)
        np.testing.assert_array_equal(site.test.tensors[1].numpy(), wrapper[site.name].y_test)


def test_a_site_given_only_its_own_rows_splits_as_in_simulation(heart_csv: Path, tmp_path: Path) -> None:
    with open(heart_csv, newline="") as handle:
        lines = handle.read().splitlines()
    own = tmp_path / "cleveland.csv"
    own.write_text("\n".join([lines[0], *(line for line in lines[1:] if ",Cleveland," in line)]) + "\n")
    simulated = {s.name: s for s in _workload(HEART).load_sites(_data(heart_csv), 0, lambda _: None)}

    deployed = _workload(DECLARED).load_site(_data(heart_csv), 0, own, "Cleveland")  # no prepare: declared

    np.testing.assert_array_equal(deployed.train.tensors[0].numpy(), simulated["Cleveland"].train.tensors[0].numpy())
    np.testing.assert_array_equal(deployed.test.tensors[1].numpy(), simulated["Cleveland"].test.tensors[1].numpy())
    assert deployed.notes == simulated["Cleveland"].notes and deployed.skipped == simulated["Cleveland"].skipped


def test_a_pooled_and_a_federated_site_task_learn_the_heart_table(heart_csv: Path) -> None:
    workload = _workload(HEART)
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
    workload = _workload(config)
    sites = workload.load_sites(_data(path, 0.3), 0, lambda _: None)
    start = workload.initial(0)
    task = workload.task(workload.pool([s.train for s in sites]), None, site="pooled", seed=0, dp_sgd=None)

    trained = _trained(start, task.train(start, {"local_steps": 200, "batch_size": 64}, round=1).update)

    w = dict(zip(workload.fields.encoded_features() or (), trained["0.weight"][0], strict=True))
    assert workload.metric == "c_index" and workload.metric_keys == ("c_index", "cox_loss")
    assert w["age"] > 0.3 and w["marker"] < -0.3 and abs(w["noise"]) < 0.2 and w["stage=III"] > w["stage=II"] > 0
    assert all(task.score(trained, s.test)["c_index"] > 0.65 for s in sites)
    assert "events" in sites[0].notes[1]


def test_the_model_size_comes_from_the_config_or_the_loaded_table(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("site,a,g,y\n" + "".join(f"A,{i},{'xyz'[i % 3]},{i % 2}\n" for i in range(12)))
    declared = TableTaskConfig(target="y", features=("a", "g"), categories={"g": ("x", "y", "z")}, missing="impute")
    open_layout = _workload(TableTaskConfig(target="y"))

    open_layout.load_sites(_data(path), 0, lambda _: None)  # a simulation: prepare learns the layout

    assert _workload(declared).initial(0)["0.weight"].shape == (1, 5)  # a, a:missing, g=y, g=z, g=(missing)
    assert open_layout.initial(0)["0.weight"].shape == (1, 3)  # a, g=y, g=z
    assert open_layout.fields.encoded_features() == ("a", "g=y", "g=z")
    assert "3 features" in open_layout.describe()


def test_a_deployed_site_or_server_without_a_declared_layout_is_told_what_to_declare(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("site,a,g,y\n" + "".join(f"A,{i},{'xyz'[i % 3]},{i % 2}\n" for i in range(12)))
    categorical = TableTaskConfig(target="y", features=("a", "g"), categorical=("g",))  # levels not given
    multiclass = TableTaskConfig(target="g", kind="multiclass", features=("a",))  # classes not given
    what = "list features and the categories of every categorical column in the task"

    with pytest.raises(TaskError, match=what):
        _workload(TableTaskConfig(target="y")).initial(0)  # the server
    with pytest.raises(TaskError, match=what):
        _workload(categorical).load_site(_data(path), 0, path, "A")  # a site: it reads no other site's levels
    with pytest.raises(TaskError, match="list classes in the task"):
        _workload(multiclass).initial(0)


def test_a_site_whose_layout_differs_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("site,g,y\n" + "".join(f"A,{'xyz'[i % 3]},{i % 2}\n" for i in range(12)))
    other = tmp_path / "b.csv"
    other.write_text("site,g,y\n" + "".join(f"B,{'xy'[i % 2]},{i // 6}\n" for i in range(12)))
    workload = _workload(TableTaskConfig(target="y"))
    workload.load_sites(_data(path), 0, lambda _: None)  # the layout learnt from site A's table: g=y, g=z

    with pytest.raises(DataError, match=r"site B encodes the features \['g=y'\].*declare features and the categories"):
        workload.load_site(_data(other), 0, other, "B")


def test_the_table_task_reads_its_sites_from_the_site_column_of_one_file(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("site,a,y\n" + "".join(f"{'BA'[i % 2]},{i},{(i // 2) % 2}\n" for i in range(24)) + ",1,0\n")
    workload = _workload(TableTaskConfig(target="y"))

    names = [s.name for s in workload.load_sites(_data(path), 0, lambda _: None)]

    assert names == ["A", "B"]  # sorted, the row without a site belongs to none
    assert [s.name for s in workload.load_sites(_data(path, sites=("B",)), 0, lambda _: None)] == ["B"]
    with pytest.raises(DataError, match=r"data.sites names \['C'\]"):
        workload.load_sites(_data(path, sites=("C",)), 0, lambda _: None)
    with pytest.raises(DataError, match="is a folder; the table task reads one CSV file whose column 'site'"):
        workload.load_sites(_data(tmp_path), 0, lambda _: None)
    with pytest.raises(DataError, match="the table task reads a CSV file"):
        workload.load_site(_data(path), 0, tmp_path, "A")


def test_a_multiclass_workload_knows_its_classes(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 2))
    grade = np.where(x[:, 0] > 0.5, "high", np.where(x[:, 0] < -0.5, "low", "mid"))
    rows = [f"{'AB'[i % 2]},{x[i, 0]:.3f},{x[i, 1]:.3f},{grade[i]}" for i in range(90)]
    path.write_text("site,a,b,grade\n" + "\n".join(rows) + "\n")
    config = TableTaskConfig(target="grade", kind="multiclass", classes=("low", "mid", "high"), model="mlp")
    workload = _workload(config)

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
    batch_norm = TableTaskConfig(target="y", features=("a",), model="mlp", norm="batch")
    assert _workload(batch_norm).norm_names() == frozenset(
        {"1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"}
    )


def test_a_site_lists_its_first_hundred_dropped_rows_then_how_many_more(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    complete = "".join(f"A,{i},{i % 2}\n" for i in range(20))
    path.write_text("site,a,y\n" + complete + "".join(f"A,,{i % 2}\n" for i in range(130)))
    workload = _workload(TableTaskConfig(target="y"))

    (site,) = workload.load_sites(_data(path), 0, lambda _: None)

    assert len(site.skipped) == 101 and site.skipped[0].item == "line 22"  # the header is line 1
    assert site.skipped[0].reason == "no value for a"
    assert (site.skipped[-1].item, site.skipped[-1].reason) == ("30 more rows", "missing values")
    assert site.notes[0] == "20 rows kept, 130 dropped (missing values, missing: drop)"
