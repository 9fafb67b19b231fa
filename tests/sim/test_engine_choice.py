"""Choosing the simulation engine: bad choices are named, without starting Ray."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from confide.cli import app
from confide.config import parse_job
from confide.errors import ConfigError
from confide.sim_ray import RAY_MISSING, pool_size, require_ray


def _job(**simulation: object) -> dict[str, object]:
    return {"data": {"root": "table.csv"}, "task": {"name": "table", "target": "y"}, "simulation": simulation}


def test_an_unknown_engine_in_the_job_file_is_named() -> None:
    with pytest.raises(ConfigError, match=r"simulation\.engine"):
        parse_job(_job(engine="spark"))


def test_an_unknown_engine_on_the_command_line_is_named(tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(_job()))

    result = CliRunner().invoke(app, ["simulate", str(job_file), "--engine", "spark"])

    assert result.exit_code == 2
    assert "--engine must be one of inprocess, ray" in result.output and "'spark'" in result.output


def test_secure_aggregation_is_refused_on_the_ray_engine() -> None:
    job = _job(engine="ray")
    job["privacy"] = {"secure_aggregation": True}

    with pytest.raises(ConfigError, match="engine ray does not run secure aggregation"):
        parse_job(job)


def test_a_pool_larger_than_the_sites_is_cut_to_the_sites() -> None:
    job = parse_job(_job(engine="ray", actors=64))

    assert pool_size(job, 5) == 5
    assert pool_size(job, 100) == 64
    assert pool_size(parse_job(_job(engine="ray", cpus_per_actor=1024)), 10) == 1  # at least one actor


def test_without_ray_the_error_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if it were not installed

    with pytest.raises(ConfigError) as caught:
        require_ray()

    assert str(caught.value) == RAY_MISSING and "'.[ray]'" in RAY_MISSING


def test_a_pool_size_without_the_ray_engine_is_refused(tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(_job()))

    result = CliRunner().invoke(app, ["simulate", str(job_file), "--actors", "3"])

    assert result.exit_code == 2
    assert "--actors sets the Ray engine's pool" in " ".join(result.output.split())
