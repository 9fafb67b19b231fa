"""What one tracking backend (TensorBoard, MLflow) is told, and the names Confide gives what it tracks.

A job is tracked as a set of model runs (the federated model under its strategy's name, each baseline, each
fine-tuned model), each with scalars by round, and job-level records (its configuration, the final cross-site
tables). Names are the same in every backend:

- ``train/<metric>``: the round's aggregated training metrics (``train/loss``);
- ``eval/<site>/<metric>``, ``eval/all/<metric>``: federated evaluation at each site and its mean over the sites;
- ``round/seconds``, ``round/site_seconds``, ``round/coordination_seconds``, ``round/participants``,
  ``round/failures``;
- ``curve/<metric>``: the simulator's learning curve (the model's mean over every site's test split);
- ``privacy/<site>/epsilon``: the site's ledger total at the end of the round (a simulation, which holds the
  ledgers);
- ``privacy/<site>/epsilon_reported``: in a deployment, the epsilon the site reported with its update of the round
  (``meta["epsilon"]``, plain or masked: its kit's ledger total, over every job the kit took part in): the site's
  own word, which the server cannot check (the ledger stays in the site's kit);
- ``cross_site/<site>/<metric>``, ``cross_site/all/<metric>``: the final model on every site's test split.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from confide.errors import ConfigError

INSTALL = "pip install 'confide[tracking]'"


class Sink(Protocol):
    """One tracking backend. Any method may raise: :class:`~confide.report.tracking.Tracking` logs the error once
    and stops telling that backend anything, and the job goes on."""

    label: str  # the job file's field that turned it on, as errors name it: report.tensorboard, report.mlflow

    def config(self, params: Mapping[str, str], document: Mapping[str, Any]) -> None:
        """The job as configured: flattened (``federation.rounds`` -> ``"10"``) and as its JSON document."""
        ...

    def scalars(self, run: str, step: int, values: Mapping[str, float]) -> None:
        """A model run's scalars at ``step`` (its round), under the names above."""
        ...

    def table(self, name: str, markdown: str, document: Mapping[str, Any]) -> None:
        """A job-level table, as Markdown and as JSON-ready data."""
        ...

    def attach(self, path: Path) -> None:
        """A file of the report (``rounds.json``), kept with the job where the backend keeps files."""
        ...

    def close(self, failed: bool) -> None:
        """The job is over (``failed``: it ended in an error); write what is buffered and let go."""
        ...


_UNSAFE = re.compile(r"[^\w.\- ]")


def part(name: str) -> str:
    """One component of a tracked name: characters other than letters, digits, ``_ . - `` and space become ``_``
    (MLflow refuses them in a metric's name, TensorBoard in a run's folder), and ``.``/``..`` are no components."""
    safe = _UNSAFE.sub("_", name) or "_"
    return "_" if set(safe) <= {"."} else safe


def key(*parts: str) -> str:
    """A tracked name from its components (site names among them), joined by ``/``."""
    return "/".join(part(p) for p in parts)


def missing_extra(field: str, package: str, cause: ImportError) -> ConfigError:
    """The error of a job that asks for tracking without the extra installed (or with a broken one: ``cause``)."""
    return ConfigError(f"{field} needs {package}, which cannot be imported ({cause}): {INSTALL}")
