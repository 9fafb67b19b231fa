"""Tracking for TensorBoard (``report.tensorboard: true``): event files written by torch's ``SummaryWriter`` under
``<report.out>/tensorboard``, one folder per model run (``fedavg``, ``local_north``, ...) and ``job`` for the job's
configuration and final tables (as text). ``tensorboard --logdir <report.out>/tensorboard`` shows them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confide.errors import ConfigError
from confide.report.tracking_sink import missing_extra, part

JOB_RUN = "job"  # the folder of the job-level records (no model is named so: models are strategies and baselines)


class TensorBoardSink:
    label = "report.tensorboard"

    def __init__(self, folder: Path) -> None:
        try:  # tensorboard itself first: torch's module may be imported already while tensorboard is gone
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise missing_extra(self.label, "TensorBoard", exc) from None
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{self.label}: cannot make the folder {folder}: {exc.strerror or exc}") from None
        self.folder = folder
        self._make = SummaryWriter
        self._writers: dict[str, Any] = {}

    def _writer(self, run: str) -> Any:
        writer = self._writers.get(run)
        if writer is None:
            writer = self._writers[run] = self._make(log_dir=str(self.folder / part(run)))
        return writer

    def config(self, params: Mapping[str, str], document: Mapping[str, Any]) -> None:
        rows = "\n".join(f"| {name} | {_cell(value)} |" for name, value in params.items())
        self._writer(JOB_RUN).add_text("config", f"| field | value |\n|---|---|\n{rows}", 0)
        self._writer(JOB_RUN).flush()

    def scalars(self, run: str, step: int, values: Mapping[str, float]) -> None:
        writer = self._writer(run)
        for name, value in values.items():
            writer.add_scalar(name, float(value), step)
        writer.flush()  # seen while the job runs; a full disk shows here, not at the end

    def table(self, name: str, markdown: str, document: Mapping[str, Any]) -> None:
        self._writer(JOB_RUN).add_text(name, markdown, 0)
        self._writer(JOB_RUN).flush()

    def attach(self, path: Path) -> None:
        """TensorBoard keeps no files: the report folder holds it."""

    def close(self, failed: bool) -> None:
        writers, self._writers = list(self._writers.values()), {}
        first: Exception | None = None
        for writer in writers:  # every writer closed, the first error raised after
            try:
                writer.close()
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first


def _cell(value: str) -> str:
    """A value in a Markdown table cell: one line, no column separator."""
    return value.replace("|", "\\|").replace("\n", " ")
