"""Progress display for long work: one bar per phase and a live status line (rich).

Phases and statuses name sites and models: they are shown as plain text, never read as rich markup or emoji codes
(a site called ``local:Hungary:`` is not drawn as a flag).
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class ProgressDisplay:
    """A rich progress display on a terminal; elsewhere (CI, a log file) one plain line per step."""

    def __init__(self, console: Console | None = None, *, enabled: bool = True) -> None:
        self.console = console or Console(emoji=False)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}", markup=False),
            console=self.console,
            disable=not enabled,
            transient=False,
        )
        self._task: TaskID | None = None
        self._plain = enabled and not self.console.is_terminal
        self._enabled = enabled
        self._done = 0
        self._total = 0

    def __enter__(self) -> ProgressDisplay:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def phase(self, description: str, total: int | None) -> None:
        """Start a new bar (the previous one stays on screen, complete); ``total`` None: steps unknown."""
        if self._task is not None:
            self._progress.update(self._task, status="")
        self._task = self._progress.add_task(description, total=total, status="")
        self._done, self._total = 0, total or 0
        if self._plain:
            line = description + ("" if total is None else f" ({total} steps)")
            self.console.print(Text(line), highlight=False)

    def advance(self, steps: int = 1, status: str | None = None) -> None:
        if self._task is None:
            return
        self._done += steps
        if status is None:
            self._progress.advance(self._task, steps)
        else:
            self._progress.update(self._task, advance=steps, status=status)
        if self._plain and status is not None:
            self.console.print(Text(f"  [{self._done}/{self._total}] {status}"), highlight=False)

    def status(self, text: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, status=text)
