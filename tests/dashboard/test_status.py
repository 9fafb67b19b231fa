"""`confide status --kit KIT`: a running federation's facts in the terminal, read from its live dashboard."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from confide.cli import app
from confide.dashboard.files import TOKEN_FILE, write_place
from confide.dashboard.live import Dashboard
from confide.dashboard.snapshot import UpdateNote
from confide.records import Arrays
from confide.server.loop import RoundResult
from tests.dashboard.support import TOKEN, table_job

HUNGARY = "local:Hungary:"  # rich would draw :Hungary: as a flag
MARKUP = "[bold]x[/bold]"  # and this in bold, without its brackets


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Path]:
    """A folder as `confide server --dashboard` leaves it, its dashboard running with two rounds recorded."""
    folder = tmp_path / "kit"
    folder.mkdir()
    (folder / TOKEN_FILE).write_text(TOKEN + "\n")
    (folder / TOKEN_FILE).chmod(0o600)
    job = table_job(tmp_path / "t.csv", tmp_path / "run")
    with Dashboard(job, mode="deployment", token=TOKEN) as live:
        write_place(folder, "127.0.0.1", live.port)
        for rnd in (1, 2):
            live.state.round_started(rnd, [HUNGARY, MARKUP])
            live.state.saw_update(
                HUNGARY,
                UpdateNote(
                    round=rnd,
                    masked=False,
                    num_examples=1,
                    filters=("gaussian",),
                    recorded={"epsilon": 0.5 * rnd, "delta": 1e-5},
                    metrics={},
                ),
            )
            live.state.site_finished(rnd, MARKUP, False, f"site {MARKUP} refused: :warning: budget spent")
            live.state.round_finished(
                RoundResult(rnd, (HUNGARY,), {MARKUP: "refused"}, {"loss": 0.3}, {}, 1.0, 0.25), Arrays.from_dict({})
            )
        live.state.scored(2, {"auc": 0.8125})  # as a simulation scores its model on the test splits
        yield folder


def test_status_prints_sites_rounds_and_privacy_with_names_as_text(kit: Path) -> None:
    result = CliRunner().invoke(app, ["status", "--kit", str(kit)])

    assert result.exit_code == 0, result.output
    out = result.output
    assert "round 2 of 3 closed" in out and "rounds closed: 2 of 3" in out
    assert HUNGARY in out and MARKUP in out and ":warning:" in out  # no emoji, no markup
    assert "\N{REGIONAL INDICATOR SYMBOL LETTER H}" not in out and "⚠" not in out
    assert "refused" in out and "gaussian" in out
    assert "privacy" in out and "1.000" in out and "cannot check" in out  # the epsilon Hungary reported last
    assert "0.75" in out  # round 2's coordination time (1.0 s, of which 0.25 s the sites' own work)
    assert "test splits" in out and "0.8125" in out


def test_status_without_a_dashboard_says_how_to_start_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["status", "--kit", str(tmp_path)])

    assert result.exit_code == 2 and "no dashboard.json" in result.output and "--dashboard PORT" in result.output


def test_status_when_the_server_is_not_running_says_so(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on once this closes
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    write_place(tmp_path, "127.0.0.1", port)
    (tmp_path / TOKEN_FILE).write_text(TOKEN + "\n")

    result = CliRunner().invoke(app, ["status", "--kit", str(tmp_path)])

    assert (
        result.exit_code == 2 and "no dashboard answers" in result.output and "is the server running" in result.output
    )


def test_status_with_another_token_says_it_was_refused(kit: Path) -> None:
    (kit / TOKEN_FILE).write_text("another-token-of-another-server\n")

    result = CliRunner().invoke(app, ["status", "--kit", str(kit)])

    assert result.exit_code == 2 and "refused the token" in result.output
