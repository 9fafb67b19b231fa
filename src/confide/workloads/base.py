"""The workload protocol: everything the experiment, the deployment and the reports need from one kind of task.

A workload is built from its task config (``config.task`` of the job). Its data objects (a site's training or
test split) are opaque to the experiment: only the workload and its tasks look inside them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from confide.privacy.config import DpSgdSpec
from confide.privacy.spend import Spend
from confide.records import Arrays, Config, EvalRes, Skipped, TrainRes


@dataclass(frozen=True)
class SiteSplit:
    """One site's data: a training split, a test split, and what was skipped while reading it."""

    name: str
    train: Any
    test: Any
    skipped: tuple[Skipped, ...] = ()
    notes: tuple[str, ...] = ()  # what the report should say about this site (acquisition, class balance)


class SiteTask(Protocol):
    """A site's task as the experiment uses it: the runner's :class:`~confide.tasks.base.Task` plus scoring."""

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes: ...

    def evaluate(self, arrays: Arrays, config: Config, round: int) -> EvalRes: ...

    def privacy_spend(self, config: Config) -> list[Spend]: ...

    def score(self, arrays: Arrays, data: Any) -> dict[str, float]:
        """Every metric of ``metric_keys`` for the model ``arrays`` on ``data`` (any site's split)."""
        ...

    def personal(self, arrays: Arrays) -> Arrays:
        """The global model as this site uses it (its own normalisation layers under FedBN, controls removed)."""
        ...


Progress = Callable[[str], None]


class Workload(Protocol):
    metric: str  # the headline metric, higher is better ("dice_mean", "accuracy", "kappa", "c_index")
    metric_keys: tuple[str, ...]  # every key ``score`` returns, in report order

    def simulated_sites(self, data: Any, progress: Progress) -> list[str]:
        """The names of the sites a simulation's data holds (``data`` is the job's DataConfig: its root, and the
        sites it keeps), without reading their cases; the task's fields completed from the data first, where the
        task does that (``prepare``)."""
        ...

    def load_sites(self, data: Any, seed: int, progress: Progress) -> list[SiteSplit]:
        """Every site of the job's data (``data`` is the job's DataConfig), split into train and test."""
        ...

    def load_site(self, data: Any, seed: int, root: Path, name: str) -> SiteSplit:
        """One site's own data in a deployment (``root`` is what the site was given), split as in simulation."""
        ...

    def pool(self, parts: Sequence[Any]) -> Any:
        """The training splits of several sites as one (the pooled baseline)."""
        ...

    def size(self, split: Any) -> int:
        """Examples (cases, images, rows, slides) in a split."""
        ...

    def task(self, train: Any, test: Any, *, site: str, seed: int, dp_sgd: DpSgdSpec | None) -> SiteTask:
        """A site's task on its splits (``test`` may be None in a deployment's training-only site)."""
        ...

    def initial(self, seed: int) -> Arrays:
        """The untrained global model, identical for the same config and seed."""
        ...

    def norm_names(self) -> frozenset[str]:
        """Names of the model's normalisation-layer arrays (kept at the sites under FedBN)."""
        ...

    def batch_size(self) -> int:
        """The task's configured batch size."""
        ...

    def lr(self) -> float:
        """The task's configured local learning rate."""
        ...

    def describe(self) -> str:
        """One line for the report: the task, its model and its main settings."""
        ...
