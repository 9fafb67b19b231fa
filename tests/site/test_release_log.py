"""A deployed site's log of what left it: one line per answer, with its size, filters and epsilon, never arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from confide import serde
from confide.cli import app
from confide.config import JobConfig
from confide.deploy_site import private_runner
from confide.errors import ConfideError, ConfigError
from confide.privacy.build import site_chain
from confide.privacy.config import PrivacyConfig
from confide.privacy.ledger import Ledger
from confide.records import Arrays, EvalIns, TrainIns
from confide.site.release_log import (
    RELEASES,
    Release,
    ReleaseLog,
    read_releases,
    release_rows,
    release_text,
    summarize,
)
from confide.site.runner import SiteRunner
from tests.helpers import QuadraticTask
from tests.site import deployed

SIZE = 4096  # entries of the model: its update is far larger than any line of the log
GAUSSIAN = PrivacyConfig.model_validate({"filters": [{"type": "gaussian", "clip": 1.0, "noise_multiplier": 1.0}]})


def _model(value: float = 0.0) -> Arrays:
    return Arrays.from_dict({"w": np.full(SIZE, value, dtype=np.float32)})


def _runner(tmp_path: Path, *, budget: float | None, privacy: PrivacyConfig = GAUSSIAN) -> SiteRunner:
    ledger = Ledger("site-1", budget=budget) if privacy.spends else None
    log = ReleaseLog(tmp_path / "releases.jsonl", site="site-1", job="job-a", digest="ab" * 32)
    task = QuadraticTask(_model(3.0), examples=10)
    return SiteRunner("site-1", task, chain=site_chain(privacy), ledger=ledger, job="job-a", releases=log)


def _one_round_epsilon() -> float:
    return Ledger("site-1").after(site_chain(GAUSSIAN).spends())


def test_each_answer_is_one_line_with_its_bytes_and_epsilon_and_no_array(tmp_path: Path) -> None:
    runner = _runner(tmp_path, budget=100.0)
    instructions = [serde.encode(TrainIns(round=r, arrays=_model(), config={"lr": 0.5})) for r in (1, 2)]

    sizes = []
    for payload in instructions:
        sizes.append(runner.handle_encoded(payload).size)
        assert len(read_releases(tmp_path / "releases.jsonl")) == len(sizes)  # on disk before the next answer

    lines = (tmp_path / "releases.jsonl").read_text().splitlines()
    releases = [Release.model_validate_json(line) for line in lines]
    assert runner.ledger is not None
    totals = [entry.epsilon_total for entry in runner.ledger.entries]
    assert [r.bytes for r in releases] == sizes and min(sizes) > SIZE * 4
    assert [r.round for r in releases] == [1, 2] and {r.kind for r in releases} == {"update"}
    assert [r.epsilon_total for r in releases] == totals and totals[1] > totals[0] > 0
    assert releases[0].epsilon_round == pytest.approx(totals[0])
    assert releases[1].epsilon_round == pytest.approx(totals[1] - totals[0])
    assert releases[1].budget_left == pytest.approx(100.0 - totals[1])
    assert [f.name for f in releases[0].filters] == ["gaussian"] and releases[0].filters[0].params["clip"] == 1.0
    assert [c.name for c in releases[0].charged] == ["gaussian-site"]
    assert releases[0].charged[0].epsilon == pytest.approx(totals[0])
    assert releases[0].examples == 1 and releases[0].metrics == {}  # under DP: a count of 1, no metrics
    assert all(len(line) < 2000 for line in lines)  # the update (16 KB of floats) is not in it
    assert all(set(json.loads(line)) == set(Release.model_fields) for line in lines)


def test_a_refusal_and_an_evaluation_are_logged_as_what_they_are(tmp_path: Path) -> None:
    refusing = _runner(tmp_path / "dp", budget=1.5 * _one_round_epsilon())
    plain = _runner(tmp_path / "plain", budget=None, privacy=PrivacyConfig())
    train = [serde.encode(TrainIns(round=r, arrays=_model(), config={"lr": 0.5})) for r in (1, 2)]

    for payload in train:
        refusing.handle_encoded(payload)
    evaluation = plain.handle_encoded(serde.encode(EvalIns(round=3, arrays=_model())))

    first, second = read_releases(tmp_path / "dp" / "releases.jsonl")
    (scored,) = read_releases(tmp_path / "plain" / "releases.jsonl")
    assert first.kind == "update" and second.kind == "refusal" and "privacy budget" in (second.reason or "")
    assert second.epsilon_round == 0 and second.epsilon_total == first.epsilon_total and second.filters == []
    assert scored.kind == "evaluation" and scored.bytes == evaluation.size and "distance" in scored.metrics
    assert scored.epsilon_total is None and scored.budget is None
    assert release_text(scored).endswith("filters: none; no privacy ledger (nothing spent)")
    assert f"round 2: sent refusal, {second.bytes:,} bytes; filters: none; reason: " in release_text(second)
    assert f"total {first.epsilon_total:.4g} at delta 1e-05, budget" in release_text(second)


def test_an_answer_whose_line_cannot_be_written_is_not_sent(tmp_path: Path) -> None:
    runner = _runner(tmp_path, budget=None)
    (tmp_path / "releases.jsonl").mkdir()  # the log's path is taken by a folder

    with pytest.raises(ConfideError, match=r"release log .* cannot be written"):
        runner.handle_encoded(serde.encode(TrainIns(round=1, arrays=_model(), config={})))


def test_a_line_cut_short_by_a_crash_is_left_out_and_a_bad_line_is_named(tmp_path: Path) -> None:
    runner = _runner(tmp_path, budget=None)
    runner.handle_encoded(serde.encode(TrainIns(round=1, arrays=_model(), config={})))
    whole = (tmp_path / "releases.jsonl").read_text()
    (tmp_path / "cut.jsonl").write_text(whole + whole[:40])
    (tmp_path / "bad.jsonl").write_text("{}\n" + whole)

    cut = read_releases(tmp_path / "cut.jsonl")

    assert [r.round for r in cut] == [1]
    with pytest.raises(ConfigError, match=r"bad.jsonl, line 1: not a release record"):
        read_releases(tmp_path / "bad.jsonl")


def test_the_summary_sums_each_job(tmp_path: Path) -> None:
    runner = _runner(tmp_path, budget=50.0)
    for r in (1, 2, 3):
        runner.handle_encoded(serde.encode(TrainIns(round=r, arrays=_model(), config={})))
    releases = read_releases(tmp_path / "releases.jsonl")

    (job,) = summarize(releases)
    header, rows = release_rows([job])

    assert job.answers == 3 and job.rounds == (1, 3) and job.kinds == {"update": 3}
    assert job.bytes == sum(r.bytes for r in releases) and job.epsilon_total == releases[-1].epsilon_total
    assert job.budget_left == pytest.approx(50.0 - (releases[-1].epsilon_total or 0.0))
    assert header[0] == "job" and rows[0][0] == "job-a" and rows[0][2] == "3 (3 update)"


def test_a_deployed_site_logs_every_round_and_privacy_report_reads_its_kit(tmp_path: Path) -> None:
    kits = deployed.federation(tmp_path / "kits")
    site_1 = kits / "sites" / "site-1"
    (site_1 / "privacy.yaml").write_text(
        "filters: [{type: gaussian, clip: 1.0, noise_multiplier: 1.0}]\nbudget: {epsilon: 40}\n"
    )
    job = deployed.job(tmp_path, rounds=2, min_sites=3)

    def runner(name: str, site_job: JobConfig) -> SiteRunner:
        task = QuadraticTask(deployed.TARGETS[name], examples=10)
        return private_runner(kits / "sites" / name, name, site_job, task)

    result, sites = deployed.run(kits, job, approvals={}, runner=runner)
    report = CliRunner().invoke(app, ["privacy", "report", str(site_1)])
    plain = CliRunner().invoke(app, ["privacy", "report", str(kits / "sites" / "site-2")])

    assert "error" not in result, result.get("error")
    assert all(site.outcome == [2] for site in sites.values())
    releases = read_releases(site_1 / RELEASES)
    ledger = json.loads((site_1 / "ledger.json").read_text())
    assert [(r.round, r.kind, r.job) for r in releases] == [(n, "update", "consent-test") for n in (1, 2)]
    assert [r.epsilon_total for r in releases] == [e["epsilon_total"] for e in ledger["entries"]]
    assert all(r.bytes > 0 and r.budget == 40 for r in releases)
    assert sum("round 2: sent update" in line and "budget 40" in line for line in sites["site-1"].said) == 1
    assert report.exit_code == 0, report.output
    assert "privacy ledger of" in report.output and "gaussian-site" in report.output
    assert f"site-1: epsilon {releases[-1].epsilon_total:.4g}" in report.output
    assert "what left the site" in report.output and "consent-test" in report.output
    assert plain.exit_code == 0, plain.output
    assert "no privacy spent" in plain.output and "what left the site" in plain.output
