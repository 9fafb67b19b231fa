"""Tracking in MLflow (``report.mlflow``), through ``MlflowClient`` on the store the job names (no global state: two
jobs in one process track apart).

The job is one run (named after the job, in the experiment named after the job) holding its configuration as
params and ``job.json``, and its final tables as artifacts; each model is a nested run under it (MLflow's parent and
child runs) holding that model's scalars, so the UI compares models metric by metric.

Stores: ``true`` is ``<report.out>/mlruns``, a folder is read relative to the working directory; both, and
``file:`` URIs, are MLflow's file store (which MLflow 3 allows only when ``MLFLOW_ALLOW_FILE_STORE`` is set: Confide
sets it unless it is set already). A database URI (``sqlite:///...``) needs SQLAlchemy and alembic, which mlflow-skinny
lacks and the tracking extra brings; a new experiment in one keeps its files in ``<report.out>/mlartifacts``. Only
an ``http(s)`` or database URI is reached over the network: MLflow's own usage telemetry is turned off
(``MLFLOW_DISABLE_TELEMETRY``) before MLflow is imported, and again if something imported it before.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from confide.errors import ConfigError
from confide.report.tracking_sink import missing_extra, part

LABEL = "report.mlflow"
_BATCH_METRICS = 1000  # MLflow's most metrics in one log_batch
_BATCH_PARAMS = 100  # and params
_PARAM_CHARS = 500  # the shortest limit of a param's value among the MLflow versions Confide allows
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

    def __init__(self, target: bool | str, out: Path, *, experiment: str, run_name: str, tags: Mapping[str, str]):
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
            self.parent = self.client.create_run(self.experiment, run_name=run_name, tags=dict(tags)).info.run_id
        except ConfigError:
            raise
        except Exception as exc:  # the store cannot be opened: said at the job's start, before anything is run
            raise ConfigError(f"{LABEL}: cannot open the tracking store {self.uri}: {exc}") from None
        self._children: dict[str, str] = {}

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


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=1, allow_nan=False)
