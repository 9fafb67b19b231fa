"""A metric undefined at a site (an AUC with one class, a C-index without a comparable pair) is shown as such, and
a mean over the sites says how many it covers: never ``nan`` in a table or a headline."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from confide.experiment import Evaluator
from confide.records import Arrays
from confide.report.tables import gain_rows, mean_text, metric_rows, rich_table, rows, score_text
from tests.helpers import arrays

NAN = math.nan


class _Scorer:
    """Scores a site's test data as given: the data is the dict of metrics itself."""

    def score(self, model: Arrays, data: dict[str, float]) -> dict[str, float]:
        return dict(data)


class _Workload:
    metric_keys = ("accuracy", "auc")

    def task(self, *args: Any, **kwargs: Any) -> _Scorer:
        return _Scorer()

    def size(self, data: dict[str, float]) -> int:
        return 10


def test_the_mean_over_sites_leaves_out_undefined_sites_and_counts_those_it_covers() -> None:
    tests = {"a": {"accuracy": 0.8, "auc": 0.9}, "b": {"accuracy": 0.6, "auc": NAN}, "c": {"accuracy": 0.7, "auc": 0.5}}
    evaluator = Evaluator(_Workload(), tests, seed=0)  # type: ignore[arg-type]

    every = evaluator.per_site(lambda site: arrays(w=1.0))["all"]

    assert every["auc"] == pytest.approx(0.7) and every["auc_sites"] == 2
    assert every["auc_sd"] == pytest.approx(0.2)
    assert every["accuracy"] == pytest.approx(0.7) and every["accuracy_sites"] == 3


def test_no_site_with_the_metric_gives_nan_covering_none() -> None:
    evaluator = Evaluator(_Workload(), {"a": {"accuracy": 1.0, "auc": NAN}}, seed=0)  # type: ignore[arg-type]

    every = evaluator.per_site(lambda site: arrays(w=1.0))["all"]

    assert math.isnan(every["auc"]) and every["auc_sites"] == 0
    assert mean_text(every, "auc", 1) == "n/a (no site)"


CROSS = {
    "local:a": {
        "a": {"auc": 0.8, "cases": 5.0},
        "b": {"auc": NAN, "cases": 4.0},
        "all": {"auc": 0.8, "auc_sd": 0.0, "auc_sites": 1.0, "cases": 9.0},
    },
    "fedavg": {
        "a": {"auc": 0.9, "cases": 5.0},
        "b": {"auc": NAN, "cases": 4.0},
        "all": {"auc": 0.9, "auc_sd": 0.0, "auc_sites": 1.0, "cases": 9.0},
    },
}


def test_the_tables_show_undefined_scores_and_partial_means_in_words() -> None:
    header, body = rows(CROSS, "auc")
    _, long = metric_rows(CROSS, ("auc",))
    _, gained = gain_rows(CROSS, "auc", "fedavg")

    assert header == ["model", "a (n=5)", "b (n=4)", "mean over sites", "sd"]
    assert body[1] == ["fedavg", "0.900\u2020", "n/a (one class)", "0.900 (1 of 2 sites)", "0.000"]  # small splits
    assert ["fedavg", "all", "9", "0.900 (1 of 2 sites)"] in long
    assert gained == [["a", "5", "0.800\u2020", "0.900\u2020", "+0.100\u2020"], ["b", "4", "-", "n/a (one class)", "-"]]
    cells = [cell for row in [*body, *long, *gained] for cell in row]
    assert not any("nan" in cell for cell in cells)


def test_the_terminal_table_still_marks_the_best_mean() -> None:
    table = rich_table(CROSS, "auc", title="auc")

    assert [row.style for row in table.rows] == [None, "green"]


@pytest.mark.parametrize(
    ("value", "metric", "text"),
    [(0.71234, "auc", "0.712"), (NAN, "auc", "n/a (one class)"), (NAN, "c_index", "n/a (no comparable pair)")],
)
def test_a_score_is_a_number_or_says_why_it_is_none(value: float, metric: str, text: str) -> None:
    assert score_text(value, metric) == text
    assert score_text(np.float64(value), "") == (text if text[0] != "n" else "n/a")
