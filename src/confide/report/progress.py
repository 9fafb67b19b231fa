"""Progress display for long work: one bar per phase and a live status line (rich)."""

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


class ProgressDisplay:
    """A rich progress display on a terminal; elsewhere (CI, a log file) one plain line per step."""

    def __init__(self, console: Console | None = None, *, enabled: bool = True) -> None:
        self.console = console or Console()
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
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
            self.console.print(description + ("" if total is None else f" ({total} steps)"), highlight=False)

    def advance(self, steps: int = 1, status: str | None = None) -> None:
        if self._task is None:
            return
        self._done += steps
        if status is None:
            self._progress.advance(self._task, steps)
        else:
            self._progress.update(self._task, advance=steps, status=status)
        if self._plain and status is not None:
            self.console.print(f"  [{self._done}/{self._total}] {status}", highlight=False)

    def status(self, text: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, status=text)
