"""A Ray actor's work without Ray: a SiteHost keeps its sites, reads their data itself and answers in serde bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from confide import job_plan, serde
from confide.config import JobConfig, parse_job
from confide.errors import ConfideError
from confide.kinds.tables.synthetic import synthetic_binary_table
from confide.records import TrainIns, TrainRes
from confide.sim_ray import hosts_job
from confide.sim_ray_host import HostReport, HostScores, SiteHost, job_document
from confide.workloads.base import Workload
from confide.workloads.registry import make_workload


def _job(folder: Path) -> JobConfig:
    table = folder / "table.csv"
    table.write_text(synthetic_binary_table(["a", "b", "c"], rows=20, features=3, seed=0))
    return parse_job(
        {
            "seed": 2,
            "task": {"name": "table", "target": "y", "split_column": None},
            "data": {"root": str(table)},
            "simulation": {"engine": "ray"},
        }
    )


def test_the_job_crosses_to_the_hosts_as_json_unchanged(tmp_path: Path) -> None:
    job = _job(tmp_path)

    again = parse_job(json.loads(job_document(job)))

    assert again == job


def test_relative_paths_reach_the_hosts_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job(tmp_path)
    monkeypatch.chdir(tmp_path)
    relative = job.model_copy(update={"data": job.data.model_copy(update={"root": Path("table.csv")})})

    sent = hosts_job(relative)

    assert sent.data.root == tmp_path.resolve() / "table.csv"


def test_a_host_answers_for_its_own_sites_only(tmp_path: Path) -> None:
    job = _job(tmp_path)
    host = SiteHost(job_document(job), ["a", "c"], total_sites=3)
    initial = job_plan.initial_global(job, _prepared(job))
    instruction = serde.encode(TrainIns(round=1, arrays=initial, config=job.train_config()))

    loaded = host.load()
    answer, seconds = host.handle("c", instruction)

    assert loaded == 2 and sorted(host.runners) == ["c"]  # data read for both, a runner built for the one asked
    record = serde.decode(answer)
    assert isinstance(record, TrainRes) and record.round == 1 and seconds > 0
    with pytest.raises(ConfideError, match="'b' is not kept by this host"):
        host.handle("b", instruction)
    scores = HostScores.model_validate_json(host.scores(serde.encode_arrays(initial))).scores
    assert sorted(scores) == ["a", "c"] and all("accuracy" in s and s["cases"] > 0 for s in scores.values())
    report = HostReport.model_validate_json(host.report()).sites
    assert [(r.name, r.train + r.test) for r in report] == [("a", 20), ("c", 20)]


def _prepared(job: JobConfig) -> Workload:
    """The job's workload with its fields completed from the data (the table's layout), as the driver has it."""
    workload = make_workload(job.task)
    workload.simulated_sites(job.data, lambda line: None)
    return workload
