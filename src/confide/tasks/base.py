"""The task interface: what a site trains and evaluates. Torch and MONAI live only inside tasks."""

from __future__ import annotations

from typing import Protocol

from confide.records import Arrays, Config, EvalRes, TrainRes


class Task(Protocol):
    """A site's view of the work: its data is bound at construction, the model comes with each call."""

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        """Train from ``arrays``; return the update (trained minus received) and the examples used."""
        ...

    def evaluate(self, arrays: Arrays, config: Config, round: int) -> EvalRes:
        """Evaluate ``arrays`` on the site's held-out data."""
        ...
