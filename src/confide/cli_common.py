"""What every `confide` command shares: the console (names are text: a site called local:Hungary: is not a
flag), Confide's errors as one red line and exit code 2, and --verbose."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import ParamSpec

import typer
from rich.console import Console
from rich.markup import escape

from confide.errors import ConfideError

P = ParamSpec("P")
console = Console(emoji=False)
if not console.is_terminal:  # logs and CI: wide enough that the result table is never cut
    console = Console(width=max(console.width, 130), emoji=False)


def clean_errors(command: Callable[P, None]) -> Callable[P, None]:
    """Every command reports Confide's own errors as one red line and exit code 2, never a traceback."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except ConfideError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(code=2) from None

    return run


def verbose(on: bool) -> None:
    """--verbose: Confide's lines from INFO up (joins, rounds, retries, reconnects), timestamped, on stderr as they
    happen (the server's trail file keeps them too); undone when the command ends."""
    import click

    logger = logging.getLogger("confide")
    if not on or any(h.get_name() == "confide-verbose" for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("confide-verbose")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    before = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
    logger.propagate = False  # its warnings once, with their time, not again through the console's handler

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.propagate = before[1]

    context = click.get_current_context(silent=True)
    if context is not None:
        context.call_on_close(undo)
