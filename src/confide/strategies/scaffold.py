"""SCAFFOLD (Karimireddy et al. 2020, "Stochastic Controlled Averaging for Federated Learning").

The global arrays carry the model and the server's control variate ``c`` (names ``scaffold.c/<array>``, made by
:func:`confide.tasks.local_rules.with_controls`), so ``c`` travels with every instruction, is checked like any
update and is saved with every checkpoint. Each site keeps its own ``c_i`` and never sends it: it corrects its local
steps by ``c - c_i`` and returns its model update ``dy_i`` and its control change ``dc_i`` (see
:mod:`confide.tasks.local_rules`). The server then takes

    x <- x + eta_g * sum_i n_i dy_i / sum_i n_i        (the example-weighted mean, as FedAvg)
    c <- c + (1 / N) * sum_{i in S} dc_i               (N: every site of the federation, S: this round's)

``eta_g`` (``server_lr``) is 1 in the paper's experiments.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import numpy as np

from confide.errors import RoundFailed
from confide.records import Arrays, Scalar, SparseArrays, TrainIns, TrainRes
from confide.strategies.aggregate import apply_delta_in_place, weighted_metrics, zeros_like
from confide.strategies.base import Aggregate, StrategyState, restore_stateless
from confide.strategies.controls import CONTROL_PREFIX


class Scaffold:
    """Control-variate corrected FedAvg over a federation of ``total_sites`` sites."""

    name = "scaffold"

    def __init__(
        self, train_config: Mapping[str, Scalar] | None = None, *, total_sites: int, server_lr: float = 1.0
    ) -> None:
        if total_sites < 1:
            raise ValueError(f"scaffold: total_sites must be >= 1, got {total_sites}")
        if not (math.isfinite(server_lr) and server_lr > 0):
            raise ValueError(f"scaffold: server_lr must be finite and > 0, got {server_lr}")
        self.train_config = MappingProxyType(dict(train_config or {}))
        self.total_sites = int(total_sites)
        self.server_lr = float(server_lr)

    def configure(self, round: int, global_arrays: Arrays, sites: Sequence[str]) -> dict[str, TrainIns]:
        if not any(name.startswith(CONTROL_PREFIX) for name in global_arrays.names()):
            raise RoundFailed("scaffold: the global arrays carry no control variate (start from with_controls(model))")
        instruction = TrainIns(round=round, arrays=global_arrays, config=self.train_config)
        return {site: instruction for site in sites}

    def aggregate(self, round: int, global_arrays: Arrays, results: Iterable[tuple[str, TrainRes]]) -> Aggregate:
        acc = zeros_like(global_arrays)
        total = 0
        sites: list[str] = []
        metric_items: list[tuple[Mapping[str, float], float]] = []
        for site, res in results:
            if res.num_examples <= 0:
                continue
            if isinstance(res.update, SparseArrays):
                raise RoundFailed(f"round {round}: scaffold needs whole updates, {site} sent a sparse one")
            for name, value in res.update.items():
                # model entries weighted by examples (divided below), control entries summed (divided by N)
                weight = 1.0 if name.startswith(CONTROL_PREFIX) else float(res.num_examples)
                np.add(acc[name], np.multiply(value, weight, dtype=acc[name].dtype), out=acc[name])
            total += res.num_examples
            sites.append(site)
            metric_items.append((res.metrics, float(res.num_examples)))
        if total == 0:
            raise RoundFailed(f"round {round}: no update with examples to aggregate")
        for name, buffer in acc.items():
            factor = 1.0 / self.total_sites if name.startswith(CONTROL_PREFIX) else self.server_lr / total
            buffer *= factor
        return Aggregate(
            arrays=apply_delta_in_place(global_arrays, acc),
            sites=tuple(sites),
            num_examples=total,
            metrics=weighted_metrics(metric_items),
        )

    def state(self) -> StrategyState:
        return StrategyState()  # the control variate lives in the global arrays, checkpointed with them

    def restore(self, state: StrategyState) -> None:
        restore_stateless(self.name, state)
