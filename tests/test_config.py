from __future__ import annotations

from pathlib import Path

import pytest

from confide.config import load_job, parse_job
from confide.errors import ConfigError


def test_minimal_job_gets_defaults() -> None:
    job = parse_job({"data": {"root": "x"}})

    assert job.federation.strategy == "fedavg" and job.task.roi == (32, 32, 32)


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({"data": {"root": "x"}, "federation": {"rounds": 0}}, "federation.rounds"),
        ({"data": {"root": "x"}, "federaton": {}}, "federaton"),
        ({"data": {"root": "x"}, "task": {"roi": [30, 32, 32]}}, "multiples of 8"),
        ({"data": {"root": "x"}, "task": {"model": "resnet"}}, "task.model"),
        ({"data": {"root": "x"}, "compare": ["central"]}, "compare.0"),
        ({}, "data"),
    ],
)
def test_bad_field_is_named(document: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_job(document)


def test_job_file_errors_name_the_file(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("data: [unclosed")
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")

    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(bad_yaml)
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_job(not_mapping)
    with pytest.raises(ConfigError, match="cannot read"):
        load_job(tmp_path / "missing.yaml")


def test_example_jobs_are_valid() -> None:
    jobs = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))

    assert jobs, "jobs/ should hold example job files"
    for path in jobs:
        assert load_job(path).name


@pytest.mark.parametrize(
    ("task", "named"),
    [
        ({"name": "tabel"}, "does not match any of the expected tags"),
        ({"name": "table"}, "task.target"),
        ({"name": "table", "target": "num", "kind": "survival"}, "event column"),
        ({"name": "mammo_density", "target": "shape"}, "task.target"),
        ({"name": "mil", "pooling": "max"}, "task.pooling"),
    ],
)
def test_every_task_names_its_bad_fields(task: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_job({"data": {"root": "x"}, "task": task})


def test_a_task_without_a_name_is_the_brain_tumour_task_and_finetuning_is_on_by_default() -> None:
    job = parse_job({"data": {"root": "x"}, "task": {"roi": [16, 16, 16]}})

    assert job.task.name == "brain_tumor" and job.finetune.enabled and job.finetune.steps is None
    assert not parse_job({"data": {"root": "x"}, "finetune": {"steps": 0}}).finetune.enabled


def test_fine_tuning_defaults_to_one_rounds_steps_at_a_quarter_of_the_task_rate() -> None:
    from confide.finetune import finetune_config
    from confide.workloads.registry import make_workload

    job = parse_job({"data": {"root": "x"}, "task": {"lr": 0.004}, "federation": {"local_steps": 7}})
    chosen = parse_job({"data": {"root": "x"}, "finetune": {"steps": 3, "lr": 0.1}})

    assert finetune_config(job, make_workload(job.task)) == {"local_steps": 7, "lr": 0.001, "batch_size": 2}
    assert finetune_config(chosen, make_workload(chosen.task))["local_steps"] == 3
    assert finetune_config(chosen, make_workload(chosen.task))["lr"] == 0.1


@pytest.mark.parametrize("name", [".", "..", ".hidden", "-x"])
def test_a_job_name_that_is_not_a_plain_folder_name_is_refused(name: str) -> None:
    """Sites and the server use the job's name in paths: '.' and '..' must never be one."""
    with pytest.raises(ConfigError, match="name"):
        parse_job({"name": name})
