"""Tracking in MLflow (``report.mlflow``), through ``MlflowClient`` on the store the job names (no global state: two
jobs in one process track apart).

The job is one run (named after the job, in the experiment named after the job) holding its configuration as
params and ``job.json``, and its final tables as artifacts; each model is a nested run under it (MLflow's parent and
child runs) holding that model's scalars, so the UI compares models metric by metric. ``<report.out>/mlflow_run.json``
names the job's run, so that a deployment resumed from its checkpoint (``confide server --resume``) goes on with it.

Stores: ``true`` is ``<report.out>/mlruns``, a folder is read relative to the working directory; both, and
``file:`` URIs, are MLflow's file store (which MLflow 3 allows only when ``MLFLOW_ALLOW_FILE_STORE`` is set: Confide
sets it unless it is set already). A database URI (``sqlite:///...``) needs SQLAlchemy and alembic, which mlflow-skinny
lacks and the tracking extra brings; a new experiment in one keeps its files in ``<report.out>/mlartifacts``. Only
an ``http(s)`` or database URI is reached over the network: MLflow's own usage telemetry is turned off
(``MLFLOW_DISABLE_TELEMETRY``) before MLflow is imported, and again if something imported it before.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from confide.errors import ConfigError
from confide.report.tracking_sink import missing_extra, part
from confide.sanitize import one_line

log = logging.getLogger(__name__)

LABEL = "report.mlflow"
_BATCH_METRICS = 1000  # MLflow's most metrics in one log_batch
_BATCH_PARAMS = 100  # and params
_PARAM_CHARS = 500  # the shortest limit of a param's value among the MLflow versions Confide allows
RUN_FILE = "mlflow_run.json"
"""In ``report.out``: the store, experiment and run the job tracks to, for a resumed deployment to go on with."""
T = TypeVar("T")


def store_uri(target: bool | str, out: Path) -> str:
    """The tracking URI of ``report.mlflow``: ``true`` and folders as ``file:`` URIs, others as given."""
    if target is True:
        return (out / "mlruns").resolve().as_uri()
    text = str(target)
    return text if urlsplit(text).scheme else Path(text).expanduser().resolve().as_uri()


def _client_class() -> Any:
    """MlflowClient, imported with MLflow's usage telemetry off (nothing leaves for mlflow.org)."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise missing_extra(LABEL, "MLflow (mlflow-skinny)", exc) from None
    try:  # MLflow 3: a telemetry client made by an import before the variable was set is dropped now
        from mlflow.telemetry import set_telemetry_client
    except ImportError:  # MLflow 2 has none
        return MlflowClient
    set_telemetry_client()
    return MlflowClient


def _database_client(scheme: str) -> None:
    """MLflow's database stores run on SQLAlchemy and alembic, which mlflow-skinny does not bring."""
    try:
        import alembic  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"{LABEL}: a {scheme} store needs SQLAlchemy and alembic ({exc}): pip install sqlalchemy alembic, "
            "or track to a folder"
        ) from None


class MlflowSink:
    label = LABEL

    def __init__(
        self,
        target: bool | str,
        out: Path,
        *,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str],
        resume: bool = False,
    ):
        """``resume``: a deployment resumed from its checkpoint goes on with the runs ``out/mlflow_run.json`` names
        (when they are still in the same store), instead of starting new ones."""
        self.uri = store_uri(target, out)
        scheme = urlsplit(self.uri).scheme.split("+", 1)[0]
        if scheme == "file":
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        elif scheme not in ("http", "https"):
            _database_client(scheme)
        client_class = _client_class()
        from mlflow.entities import Metric, Param

        self._metric, self._param = Metric, Param
        artifacts = None if scheme in ("file", "http", "https") else (out / "mlartifacts").resolve().as_uri()
        try:
            self.client = client_class(tracking_uri=self.uri)
            self.experiment = self._experiment(experiment, artifacts)
            found = self._resumed(out / RUN_FILE) if resume else None
            if found is None:
                self.parent = self.client.create_run(self.experiment, run_name=run_name, tags=dict(tags)).info.run_id
                self._children: dict[str, str] = {}
            else:
                self.parent, self._children = found
        except ConfigError:
            raise
        except Exception as exc:  # the store cannot be opened: said at the job's start, before anything is run
            raise ConfigError(f"{LABEL}: cannot open the tracking store {self.uri}: {exc}") from None
        _remember(out / RUN_FILE, {"uri": self.uri, "experiment": self.experiment, "run": self.parent})

    def _resumed(self, path: Path) -> tuple[str, dict[str, str]] | None:
        """The parent run and its children by model that ``path`` names, set running again; ``None`` (a new run)
        when there is none, or it is in another store or experiment, or deleted."""
        try:
            kept = json.loads(path.read_text())
            same = kept["uri"] == self.uri and kept["experiment"] == self.experiment
            run_id = str(kept["run"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: %s cannot be read (%s); the resumed job starts a new run", LABEL, path, one_line(exc))
            return None
        if not same:
            log.info("%s: %s names a run in another store or experiment; the resumed job starts a new run", LABEL, path)
            return None
        try:
            parent = self.client.get_run(run_id)
        except Exception as exc:  # gone from the store
            log.warning("%s: the run %s to resume is not in %s (%s); a new run starts", LABEL, run_id, self.uri, exc)
            return None
        if parent.info.lifecycle_stage != "active":
            log.warning("%s: the run %s to resume is deleted; a new run starts", LABEL, run_id)
            return None
        children = {
            run.data.tags.get("confide.model", run.info.run_name): run.info.run_id
            for run in self.client.search_runs(
                [self.experiment], filter_string=f"tags.mlflow.parentRunId = '{run_id}'", max_results=10_000
            )
        }
        for each in (run_id, *children.values()):
            self.client.update_run(each, status="RUNNING")
        log.info("%s: the resumed job goes on with run %s in %s", LABEL, run_id, self.uri)
        return run_id, children

    def _experiment(self, name: str, artifacts: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return str(self.client.create_experiment(name, artifact_location=artifacts))
            except Exception:  # another job made it meanwhile
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage != "active":
            raise ConfigError(
                f"{LABEL}: the experiment {name!r} in {self.uri} is deleted: restore it in MLflow, or rename the job"
            )
        return str(found.experiment_id)

    def _run(self, model: str) -> str:
        run_id = self._children.get(model)
        if run_id is None:
            tags = {"mlflow.parentRunId": self.parent, "confide.model": model}
            run_id = self.client.create_run(self.experiment, run_name=model, tags=tags).info.run_id
            self._children[model] = run_id
        return run_id

    def config(self, params: Mapping[str, str], document: Mapping[str, Any]) -> None:
        entries = [self._param(part(name), value[:_PARAM_CHARS]) for name, value in params.items()]
        for chunk in _chunks(entries, _BATCH_PARAMS):
            self.client.log_batch(self.parent, params=chunk, synchronous=True)
        self.client.log_text(self.parent, _json(document), "job.json")

    def scalars(self, run: str, step: int, values: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        entries = [self._metric(name, float(value), now, step) for name, value in values.items()]
        run_id = self._run(run)
        for chunk in _chunks(entries, _BATCH_METRICS):
            self.client.log_batch(run_id, metrics=chunk, synchronous=True)

    def table(self, name: str, markdown: str, document: Mapping[str, Any]) -> None:
        self.client.log_text(self.parent, markdown, f"{name}.md")
        self.client.log_text(self.parent, _json(document), f"{name}.json")

    def attach(self, path: Path) -> None:
        self.client.log_artifact(self.parent, str(path))

    def close(self, failed: bool) -> None:
        status = "FAILED" if failed else "FINISHED"
        runs, self._children = [*self._children.values(), self.parent], {}
        for run_id in runs:
            self.client.set_terminated(run_id, status=status)


def _remember(path: Path, document: Mapping[str, str]) -> None:
    """Write ``document`` to ``path`` atomically; a failure is logged (a resumed job would start a new run)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(document, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("%s: cannot write %s (%s); a resumed job would start a new run", LABEL, path, one_line(exc))


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=1, allow_nan=False)
