"""The dashboard following a real simulated job (experiment -> simulator -> loop), and `confide simulate
--dashboard PORT` writing its token and address into the report folder."""

from __future__ import annotations

import stat
from pathlib import Path

from typer.testing import CliRunner

from confide.cli import app
from confide.config import parse_job
from confide.dashboard.files import PLACE_FILE, TOKEN_FILE, read_place
from confide.dashboard.live import Dashboard
from confide.experiment import run_job
from confide.report.progress import ProgressDisplay
from tests.dashboard.support import TOKEN, table_csv, table_job


def test_a_private_simulation_shows_filters_ledgers_and_the_round_that_did_not_close(tmp_path: Path) -> None:
    csv = table_csv(tmp_path / "t.csv", sites=("north", "south", "east"))
    base = table_job(csv, tmp_path / "run", rounds=5, min_sites=3).model_dump(mode="json")
    # a noise multiplier of 1.2 spends about 6.7 in round 1 and 10.3 after round 2: a budget of 12 stops round 3
    base["privacy"] = {
        "filters": [{"type": "gaussian", "clip": 1.0, "noise_multiplier": 1.2}],
        "budget": {"epsilon": 12},
    }
    job = parse_job(base)

    with Dashboard(job, mode="simulation", token=TOKEN) as dashboard:
        result = run_job(job, ProgressDisplay(enabled=False), dashboard)
        snap = dashboard.snapshot()

    fed = next(run for run in result.runs if run.kind == "federated")
    assert fed.stopped is not None
    assert [(r.round, r.status) for r in snap.rounds] == [(1, "closed"), (2, "closed"), (3, "failed")]
    assert snap.status.startswith("ended after round 2 of 5")
    assert all("privacy budget" in reason for reason in snap.rounds[2].failures.values())
    assert {s.name: s.update.filters for s in snap.sites if s.update} == {
        s: ("gaussian",) for s in ("north", "south", "east")
    }
    assert all(s.accepted == 2 and s.asked == 3 and s.last_heard_s is not None for s in snap.sites)
    assert snap.privacy.source == "ledgers" and len(snap.privacy.ledgers) == 3
    for ledger in snap.privacy.ledgers:
        epsilons = [p.epsilon for p in ledger.points]
        assert ledger.budget == 12 and [p.round for p in ledger.points] == [1, 2]
        assert epsilons == [e.epsilon_total for e in fed.ledgers[ledger.site].entries]  # the site's own ledger
        assert 0 < epsilons[0] < epsilons[1] <= 12
    # under DP the sites send no metrics: the curve is the simulator's score on the test splits (every round here)
    assert all(not r.train_metrics for r in snap.rounds)
    (auc,) = [c for c in snap.curves if c.name.startswith("test auc")]
    assert auc.rounds == (1, 2) and auc.values == tuple(p["auc"] for p in fed.curve)


def test_simulate_with_a_dashboard_keeps_its_token_private_and_says_where_it_is(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        f"name: cli\ntask: {{name: table, target: label}}\ndata: {{root: {table_csv(tmp_path / 't.csv')}}}\n"
        f"federation: {{rounds: 2, local_steps: 1, min_sites: 2}}\ncompare: []\nfinetune: {{steps: 0}}\n"
        f"report: {{out: {tmp_path / 'run'}, plots: false}}\n"
    )

    first = CliRunner().invoke(app, ["simulate", str(job), "--dashboard", "0"])
    token = (tmp_path / "run" / TOKEN_FILE).read_text()
    second = CliRunner().invoke(app, ["simulate", str(job), "--dashboard", "0"])

    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    place = read_place(tmp_path / "run")
    assert place.host == "127.0.0.1" and place.port > 0 and f"dashboard: {place.url}" in second.output
    assert str(tmp_path / "run" / TOKEN_FILE) in second.output and token.strip() not in second.output
    assert (tmp_path / "run" / TOKEN_FILE).read_text() == token  # kept across runs
    assert stat.S_IMODE((tmp_path / "run" / TOKEN_FILE).stat().st_mode) == 0o600
    assert (tmp_path / "run" / PLACE_FILE).is_file()
