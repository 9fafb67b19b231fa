"""A deployed site's copy of the final model describes itself, and the site keeps its own preprocessing statistics
beside it (never sent), so `confide predict` works there on new patients without the job's data."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from confide.api import Place
from confide.config import parse_job
from confide.kinds.tables.config import TableTaskConfig
from confide.kinds.tables.site import read_site
from confide.kinds.tables.synthetic import synthetic_binary_table
from confide.model_file import read_card
from confide.site.finish import keep_and_adapt, site_place
from confide.workloads.registry import make_workload
from confide.workloads.use import load_for_use, run_prediction, site_statistics
from tests.helpers import site_task_of

ENDED = datetime(2025, 3, 14, 10, 15, 0, tzinfo=UTC)


@pytest.fixture()
def table(tmp_path: Path) -> Path:
    path = tmp_path / "rows.csv"
    path.write_text(synthetic_binary_table(["north", "south"], 40, 3, seed=2))
    return path


def test_a_sites_final_model_describes_itself_and_its_statistics_stay_beside_it(table: Path, tmp_path: Path) -> None:
    config = TableTaskConfig(target="y", features=("x1", "x2", "x3"), device="cpu")
    job = parse_job({"name": "rows", "task": config.model_dump(), "data": {"root": str(table)},
                     "finetune": {"steps": 2}})  # fmt: skip
    place = site_place(job, table, "south")
    data = read_site(config, Place(table, "south", job.seed, job.data.test_fraction))
    task = site_task_of(config, data.train, data.test, site="south")
    final = make_workload(job.task).initial(job.seed)

    kept = keep_and_adapt(task, job, final, tmp_path / "models", when=ENDED, place=place)

    card = read_card(kept.global_model)
    tuned = read_card(kept.finetuned) if kept.finetuned else None
    assert card is not None and tuned is not None
    assert (card.kind, card.model, card.site, card.job) == ("table", "global", "south", "rows")
    assert card.features == ("x1", "x2", "x3") and card.classes == ("negative", "positive")
    assert tuned.model == "finetuned"
    assert kept.preprocessing == kept.folder / "preprocessing.json"
    document = json.loads(kept.preprocessing.read_text())
    assert document["site"] == "south" and document["statistics"]["training_rows"] == len(data.train)
    assert [c["name"] for c in document["statistics"]["columns"]] == ["x1", "x2", "x3"]
    manifest = json.loads(kept.manifest.read_text())
    assert manifest["files"]["preprocessing"] == "preprocessing.json" and manifest["confide_version"]


def test_predict_at_the_site_reads_the_statistics_kept_beside_the_model(table: Path, tmp_path: Path) -> None:
    config = TableTaskConfig(target="y", features=("x1", "x2", "x3"), device="cpu")
    job = parse_job({"name": "rows", "task": config.model_dump(), "data": {"root": str(table)},
                     "finetune": {"steps": 0}})  # fmt: skip
    data = read_site(config, Place(table, "north", job.seed, job.data.test_fraction))
    task = site_task_of(config, data.train, data.test, site="north")
    kept = keep_and_adapt(
        task,
        job,
        make_workload(job.task).initial(job.seed),
        tmp_path / "m",
        when=ENDED,
        place=site_place(job, table, "north"),
    )
    new = tmp_path / "new.csv"
    new.write_text("x1,x2,x3\n0.1,0.2,0.3\n-1,1,0\n")

    loaded = load_for_use(kept.global_model)  # no job: the model's own description
    statistics, source = site_statistics(kept.global_model, None)
    done = run_prediction(loaded, new, tmp_path / "p.csv", statistics)

    assert source == kept.folder / "preprocessing.json"
    with open(tmp_path / "p.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert done.count == 2 and all(0.0 < float(r["probability_positive"]) < 1.0 for r in rows)
    assert "site north" in done.notes[0]
