"""Site and model names are shown as they are written: rich would draw ``local:Hungary:`` as a flag and read
``[bold]`` as markup; and ``confide --version`` prints the installed version."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from confide.cli import app
from confide.model_file import confide_version
from confide.report.progress import ProgressDisplay
from confide.report.tables import rich_gains, rich_table

NAMES = (":Hungary:", "[bold]Zurich[/bold]")
CROSS = {
    f"local{name}": {
        NAMES[0]: {"auc": 0.8, "cases": 40.0},
        NAMES[1]: {"auc": 0.7, "cases": 40.0},
        "all": {"auc": 0.75, "auc_sd": 0.05, "auc_sites": 2.0, "cases": 80.0},
    }
    for name in NAMES
}


def _console() -> tuple[Console, io.StringIO]:
    """A console as a user's terminal has it (emoji and markup on by default), writing into a buffer."""
    buffer = io.StringIO()
    return Console(file=buffer, width=200, force_terminal=False, color_system=None), buffer


def test_tables_show_names_as_written() -> None:
    console, buffer = _console()

    console.print(rich_table(CROSS, "auc", title="auc at :Hungary:"))
    console.print(rich_gains(CROSS, "auc", "local:Hungary:", title="gains"))

    shown = buffer.getvalue()
    assert "local:Hungary:" in shown and "auc at :Hungary:" in shown
    assert "[bold]Zurich[/bold]" in shown
    assert "\U0001f1ed\U0001f1fa" not in shown  # the flag of Hungary


def test_progress_lines_show_names_as_written() -> None:
    console, buffer = _console()

    with ProgressDisplay(console) as display:
        display.phase("training local:Hungary: [bold]now[/bold]", 2)
        display.advance(1, status="local:Hungary: round 1 loss 0.5")

    shown = buffer.getvalue()
    assert "training local:Hungary: [bold]now[/bold] (2 steps)" in shown
    assert "[1/2] local:Hungary: round 1 loss 0.5" in shown
    assert "\U0001f1ed\U0001f1fa" not in shown


def test_the_cli_prints_a_ledger_site_name_as_written(tmp_path: Path) -> None:
    ledger = {
        "site": "local:Hungary:",
        "delta": 1e-5,
        "budget": None,
        "entries": [
            {"round": 1, "mechanism": "svt", "params": {}, "epsilon_round": 0.5, "epsilon_total": 0.5, "delta": 0}
        ],
    }
    (tmp_path / "privacy").mkdir()
    (tmp_path / "privacy" / "a.json").write_text(json.dumps(ledger))

    printed = CliRunner().invoke(app, ["privacy", "report", str(tmp_path)], terminal_width=200)

    assert printed.exit_code == 0, printed.output
    assert printed.output.count("local:Hungary:") == 3  # the release, the matrix's column and the total
    assert "\U0001f1ed\U0001f1fa" not in printed.output


def test_version_prints_the_installed_version() -> None:
    long = CliRunner().invoke(app, ["--version"])
    short = CliRunner().invoke(app, ["-V"])

    assert long.exit_code == 0 and short.exit_code == 0
    assert long.output == short.output == f"confide {confide_version()}\n"
    assert confide_version() != "unknown"
