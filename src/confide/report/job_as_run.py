"""The job as run, for the report: Confide's version, when it ran and for how long, the command, the machine
(Python, torch, processor, accelerator) and the whole configuration as validated (defaults filled in), so a reader
can tell what produced the numbers and run it again."""

from __future__ import annotations

import html
import importlib.metadata
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from confide.config import JobConfig
from confide.model_file import confide_version
from confide.report import html_page
from confide.report.section import Section
from confide.report.tables import markdown_table


@dataclass(frozen=True)
class RunFacts:
    version: str
    started: datetime  # UTC
    ended: datetime  # UTC
    seconds: float
    command: str
    python: str
    torch: str
    system: str
    processor: str
    accelerator: str

    def rows(self) -> list[list[str]]:
        return [
            ["Confide", self.version],
            ["started", _when(self.started)],
            ["ended", _when(self.ended)],
            ["duration", duration_text(self.seconds)],
            ["command", self.command],
            ["Python", self.python],
            ["torch", self.torch],
            ["system", self.system],
            ["processor", self.processor],
            ["accelerator", self.accelerator],
        ]

    def document(self) -> dict[str, Any]:
        """JSON-ready (for ``metrics.json``): times in ISO 8601."""
        out = asdict(self)
        out.update(started=self.started.isoformat(timespec="seconds"), ended=self.ended.isoformat(timespec="seconds"))
        return out


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def duration_text(seconds: float) -> str:
    """``7.6 s``, ``3 min 12 s``, ``2 h 05 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def run_facts(seconds: float, *, ended: datetime | None = None, argv: Sequence[str] | None = None) -> RunFacts:
    """The facts of a job that took ``seconds`` and ended at ``ended`` (now by default), run by ``argv`` (this
    process's command line by default)."""
    if not seconds >= 0:
        raise ValueError(f"a job's duration must be a number of seconds >= 0, got {seconds!r}")
    end = (ended or datetime.now(UTC)).astimezone(UTC)
    args = list(sys.argv if argv is None else argv)
    command = shlex.join([Path(args[0]).name, *args[1:]]) if args else "-"
    torch_version, accelerator = _torch()
    return RunFacts(
        version=confide_version(),
        started=end - timedelta(seconds=seconds),
        ended=end,
        seconds=float(seconds),
        command=command,
        python=f"{platform.python_version()} ({platform.python_implementation()})",
        torch=torch_version,
        system=platform.platform(),
        processor=_processor(),
        accelerator=accelerator,
    )


def _torch() -> tuple[str, str]:
    """torch's version and the accelerators it sees; torch is not imported for this (a job without it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            installed = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        return f"{installed} (not loaded by this job)", "not looked for (torch not loaded)"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return str(torch.__version__), f"{', '.join(names)} (CUDA {torch.version.cuda})"
    mps = getattr(torch.backends, "mps", None)  # absent from some builds: an attribute of torch, not of ours
    if mps is not None and mps.is_available():
        return str(torch.__version__), "Apple MPS"
    return str(torch.__version__), "none: CPU only"


def _processor() -> str:
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown"
    return f"{name}, {os.cpu_count() or '?'} logical cores"


def config_yaml(job: JobConfig) -> str:
    """The job's configuration as validated (every default filled in), as YAML."""
    return yaml.safe_dump(
        json.loads(job.model_dump_json()), sort_keys=False, allow_unicode=True, width=110, default_flow_style=None
    )


def section(job: JobConfig, facts: RunFacts, reading_seconds: float | None = None) -> Section:
    """The section "The job as run": the facts as a table (``reading_seconds``: how long reading the data took,
    where measured), then the configuration."""
    rows = facts.rows()
    if reading_seconds is not None:
        rows.insert(4, ["reading the data", duration_text(reading_seconds)])
    config = config_yaml(job)
    intro = "What produced these numbers; the configuration is the job as validated, every default filled in."
    md = [
        "## The job as run",
        "",
        intro,
        "",
        markdown_table(["fact", "value"], rows),
        "",
        "```yaml",
        config.rstrip("\n"),
        "```",
        "",
    ]
    page = (
        f"<h2>The job as run</h2><p>{html.escape(intro)}</p>"
        f"{html_page.table(['fact', 'value'], rows, text_columns=(1,))}"
        f"<details><summary>the job's configuration (YAML)</summary><pre>{html.escape(config)}</pre></details>"
    )
    return Section(tuple(md), page)
