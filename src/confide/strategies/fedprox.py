"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks").

The server aggregates exactly as FedAvg; what changes is the sites' local objective, which adds the proximal term
``mu/2 * ||w - w_global||^2`` (see :mod:`confide.tasks.proximal`). The strategy tells the sites ``mu`` through the
instruction config (``proximal_mu``); ``mu = 0`` is plain FedAvg.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from confide.records import Arrays, Scalar, TrainIns, TrainRes
from confide.strategies.base import Aggregate, StrategyState, restore_stateless
from confide.strategies.fedavg import FedAvg, Missing


class FedProx:
    """FedAvg's aggregation, with ``proximal_mu`` added to the instruction every site receives."""

    name = "fedprox"

    def __init__(
        self, train_config: Mapping[str, Scalar] | None = None, *, mu: float, missing: Missing = "reported"
    ) -> None:
        if not (math.isfinite(mu) and mu >= 0):
            raise ValueError(f"fedprox: mu must be finite and >= 0, got {mu}")
        self.mu = float(mu)
        self.averager = FedAvg({**(train_config or {}), "proximal_mu": self.mu}, missing=missing)

    @property
    def train_config(self) -> Mapping[str, Scalar]:
        return self.averager.train_config

    def configure(self, round: int, global_arrays: Arrays, sites: Sequence[str]) -> dict[str, TrainIns]:
        return self.averager.configure(round, global_arrays, sites)

    def aggregate(self, round: int, global_arrays: Arrays, results: Iterable[tuple[str, TrainRes]]) -> Aggregate:
        return self.averager.aggregate(round, global_arrays, results)

    def state(self) -> StrategyState:
        return StrategyState()

    def restore(self, state: StrategyState) -> None:
        restore_stateless(self.name, state)
