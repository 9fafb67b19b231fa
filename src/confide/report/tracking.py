"""Tracking a job in TensorBoard and MLflow while it runs (``report.tensorboard``, ``report.mlflow``).

:func:`open_tracking` opens what the job file asks for at the job's start (a missing extra, or a store that cannot
be opened, is a :class:`~confide.errors.ConfigError` then, before anything has run) and logs the job's
configuration. :meth:`Tracking.rounds` gives a round listener (:class:`~confide.server.loop.RoundEvents`) for one
model's run, to be told with the others through :class:`~confide.server.events.Fanout`; in a deployment, the same
listener hears each site's training answer on its way to the loop (:mod:`confide.server.observed`: its header read
once, for the dashboard too) and tracks the epsilon the site reported with it. :meth:`Tracking.finish_job`
adds the simulator's final cross-site tables; leaving the ``with`` block ends the tracked runs (failed where the
job raised).

A backend that fails mid-job (a full disk, a store gone) is logged once and told nothing more; the job, its other
backend and its own report go on. The names of what is tracked are listed in :mod:`confide.report.tracking_sink`.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import threading
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from confide.config import JobConfig
from confide.privacy.ledger import Ledger
from confide.records import Arrays
from confide.report.tables import epsilon_by_round, markdown_table, metric_rows, rows
from confide.report.tracking_mlflow import MlflowSink, store_uri
from confide.report.tracking_sink import Sink, key
from confide.report.tracking_tensorboard import TensorBoardSink
from confide.sanitize import one_line
from confide.server.loop import RoundResult
from confide.server.reported import ReportedUpdate

if TYPE_CHECKING:
    from confide.run_result import JobResult  # read, never imported at run time: the experiment sits above

log = logging.getLogger(__name__)


class Tracking:
    """The backends a job tracks to (none: tracking is off, and every method does nothing)."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self._sinks = list(sinks)
        self._live_privacy: set[str] = set()  # model runs whose privacy was tracked round by round
        self._closed = False

    @property
    def labels(self) -> list[str]:
        """The backends still tracked to (a failed one is left out)."""
        return [sink.label for sink in self._sinks]

    def _tell(self, call: Callable[[Sink], None]) -> None:
        for sink in list(self._sinks):
            try:
                call(sink)
            except Exception as exc:
                self._sinks.remove(sink)
                log.warning(
                    "tracking (%s) failed and stops here; the job and its report go on: %s",
                    sink.label,
                    one_line(f"{type(exc).__name__}: {exc}", 300),
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
                try:
                    sink.close(failed=True)
                except Exception:  # what a broken store does on closing is no news
                    log.debug("closing %s after its failure raised too", sink.label, exc_info=True)

    def config(self, job: JobConfig) -> None:
        document = job.model_dump(mode="json")
        self._tell(lambda sink: sink.config(flat_params(document), document))

    def scalars(self, run: str, step: int, values: Mapping[str, float]) -> None:
        if values:
            self._tell(lambda sink: sink.scalars(run, step, values))

    def rounds(
        self,
        run: str,
        *,
        ledgers: Mapping[str, Ledger | None] | None = None,
        curve: Sequence[Mapping[str, float]] | None = None,
    ) -> TrackedRounds | None:
        """The round listener of the model run ``run`` (``None`` when nothing is tracked, which a Fanout leaves
        out). ``ledgers``: the sites' ledgers, read after each round for its epsilon. ``curve``: the run's learning
        curve, which a listener told before this one extends each round (the simulator's Recorder). A deployment,
        which holds no ledger, also makes it a reply listener of its transport (the epsilon each site reports)."""
        if not self._sinks:
            return None
        kept = {site: ledger for site, ledger in (ledgers or {}).items() if ledger is not None}
        if kept:
            self._live_privacy.add(run)
        return TrackedRounds(self, run, kept, curve)

    def finish_job(self, result: JobResult) -> None:
        """The simulator's final results: every model on every site's test split (scalars in each model's run, and
        the tables), and the epsilon per round of runs whose ledgers were not read as they ran (the Ray engine's)."""
        if not self._sinks:
            return
        try:
            self._finish(result)
        except Exception as exc:  # reading an odd result: the job and its own report go on
            log.warning("tracking the job's final tables failed: %s", one_line(f"{type(exc).__name__}: {exc}", 300))

    def _finish(self, result: JobResult) -> None:
        keys = set(result.metric_keys)
        for run in result.runs:
            cross = result.cross.get(run.name, {})
            values = {
                key("cross_site", site, metric): value
                for site, metrics in cross.items()
                for metric, value in metrics.items()
                if metric in keys
            }
            self.scalars(run.name, _last_round(run.curve, result.job.federation.rounds), values)
            if run.ledgers and run.name not in self._live_privacy:
                for rnd, spent in privacy_by_round(run.ledgers).items():
                    self.scalars(run.name, rnd, spent)
        header, body = rows(result.cross, result.metric)
        long_header, long_body = metric_rows(result.cross, result.metric_keys)
        label = result.metric.replace("_", " ")
        markdown = (
            f"**{label} on every site's held-out test split**\n\n{markdown_table(header, body)}\n\n"
            f"**Every metric, per site**\n\n{markdown_table(long_header, long_body)}\n"
        )
        document = {"metric": result.metric, "cross_site": json_ready(result.cross)}
        self._tell(lambda sink: sink.table("cross_site", markdown, document))

    def attach(self, path: Path) -> None:
        """A report file kept with the tracked job (MLflow's artifacts)."""
        if path.is_file():
            self._tell(lambda sink: sink.attach(path))

    def close(self, *, failed: bool = False) -> None:
        """End the tracked runs (``failed``: the job raised); idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        self._tell(lambda sink: sink.close(failed))
        self._sinks = []

    def __enter__(self) -> Tracking:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close(failed=error is not None)


class TrackedRounds:
    """A model run's rounds, as :class:`~confide.server.loop.RoundEvents`: the round's scalars at its number. It is
    also a :class:`~confide.server.observed.ReplyListener`: in a deployment it hears each site's training answer and
    tracks, with the round, the epsilon the site reported (``privacy/<site>/epsilon_reported``: the total of the
    site's own ledger, which the server cannot check; the last one a site sent for the round)."""

    def __init__(
        self,
        tracking: Tracking,
        run: str,
        ledgers: Mapping[str, Ledger],
        curve: Sequence[Mapping[str, float]] | None,
    ) -> None:
        self.tracking, self.run, self.ledgers, self.curve = tracking, run, ledgers, curve
        self._round: int | None = None  # the round running: an answer that names another is not tracked
        self._reported: dict[str, float] = {}  # site -> the epsilon it last reported for the round running
        self._lock = threading.Lock()

    def round_started(self, round: int, sites: list[str]) -> None:
        with self._lock:
            if round != self._round:  # a round that failed and runs again keeps what its sites reported
                self._round, self._reported = round, {}

    def site_finished(self, round: int, site: str, ok: bool, detail: str) -> None:
        pass

    def heard(self, site: str, update: ReportedUpdate) -> None:
        epsilon = update.epsilon
        with self._lock:
            if epsilon is not None and update.round == self._round:
                self._reported[site] = epsilon

    def ended(self) -> None:
        pass

    def round_finished(self, result: RoundResult, global_arrays: Arrays) -> None:
        values = round_scalars(result)
        if self.curve and int(self.curve[-1].get("round", -1)) == result.round:
            values.update({key("curve", k): v for k, v in self.curve[-1].items() if k not in ("round", "loss")})
        for site, ledger in self.ledgers.items():
            spent = [entry.epsilon_total for entry in ledger.entries if entry.round == result.round]
            if spent:
                values[key("privacy", site, "epsilon")] = spent[-1]
        with self._lock:
            reported, self._reported = (self._reported if result.round == self._round else {}), {}
        values.update({key("privacy", site, "epsilon_reported"): eps for site, eps in reported.items()})
        self.tracking.scalars(self.run, result.round, values)


def open_tracking(job: JobConfig, *, where: str, resume: bool = False) -> Tracking:
    """What ``job.report`` asks for, opened (``where``: simulation or deployment, a tag of the tracked job), with
    the job's configuration logged; a Tracking with no backend when it asks for none. ``resume``: a deployment
    resumed from its checkpoint, which goes on with its MLflow runs (TensorBoard appends to its folders anyway)."""
    report = job.report
    sinks: list[Sink] = []
    try:
        if report.tensorboard:
            sinks.append(TensorBoardSink(report.out / "tensorboard"))
        if report.mlflow is not False:
            tags = {"confide.where": where, "confide.version": _version(), "confide.job": job.name}
            sinks.append(
                MlflowSink(report.mlflow, report.out, experiment=job.name, run_name=job.name, tags=tags, resume=resume)
            )
    except BaseException:
        Tracking(sinks).close(failed=True)
        raise
    tracking = Tracking(sinks)
    tracking.config(job)
    return tracking


def round_scalars(result: RoundResult) -> dict[str, float]:
    """What the server knows of a round: training metrics, federated evaluation (each site's and their mean over the
    sites that reported), times, participants and failures."""
    values = {key("train", name): value for name, value in result.train_metrics.items()}
    by_metric: dict[str, list[float]] = {}
    for site, metrics in result.eval_metrics.items():
        for name, value in metrics.items():
            values[key("eval", site, name)] = value
            if math.isfinite(value):
                by_metric.setdefault(name, []).append(value)
    values.update({key("eval", "all", name): sum(v) / len(v) for name, v in by_metric.items()})
    values.update(
        {
            "round/seconds": result.seconds,
            "round/site_seconds": result.site_seconds,
            "round/coordination_seconds": result.coordination_seconds,
            "round/participants": float(len(result.sites)),
            "round/failures": float(len(result.failures)),
        }
    )
    return values


def privacy_by_round(ledgers: Mapping[str, Ledger]) -> dict[int, dict[str, float]]:
    """Round -> each site's epsilon at its end, as the report reads the ledgers."""
    out: dict[int, dict[str, float]] = {}
    for site, per_round in epsilon_by_round([ledger.document() for ledger in ledgers.values()]).items():
        for rnd, total in per_round.items():
            out.setdefault(rnd, {})[key("privacy", site, "epsilon")] = total
    return dict(sorted(out.items()))


def _version() -> str:
    try:
        return version("confide")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _last_round(curve: Sequence[Mapping[str, float]], rounds: int) -> int:
    last = int(curve[-1].get("round", 0)) if curve else 0
    return last if last > 0 else rounds


def flat_params(document: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested document as ``a.b.c`` -> text (lists and empty mappings as JSON, ``None`` as ``null``)."""
    out: dict[str, str] = {}
    for name, value in document.items():
        path = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, f"{path}."))
        else:
            out[path] = value if isinstance(value, str) else json.dumps(value)
    return out


def json_ready(value: Any) -> Any:
    """``value`` with NaN and infinite floats as ``None`` (JSON has no NaN; an undefined metric is none)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def where_tracked(job: JobConfig) -> list[str]:
    """How to look at what ``job`` tracked: a command per backend it asked for (none when it asked for none)."""
    report = job.report
    lines = []
    if report.tensorboard:
        lines.append(f"tensorboard --logdir {shlex.quote(str(report.out / 'tensorboard'))}")
    if report.mlflow is not False:
        uri = store_uri(report.mlflow, report.out)
        if uri.startswith("file:"):  # MLflow's own server (full mlflow, not skinny) opens a file store only so
            lines.append(f"MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {shlex.quote(uri)}")
        elif uri.startswith(("http:", "https:")):
            lines.append(f"MLflow at {uri}, experiment {job.name!r}")
        else:
            lines.append(f"mlflow ui --backend-store-uri {shlex.quote(uri)}")
    return lines
