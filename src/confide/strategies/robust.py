"""Robust aggregation: coordinate-wise median and trimmed mean of the sites' updates.

Both tolerate a minority of arbitrary (faulty or hostile) updates that pass the server's checks. Unlike FedAvg
they need every update of the round at once, so the server holds one update per site: memory grows with the
number of sites. Updates are not weighted by examples (a weight is something a hostile site could inflate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from types import MappingProxyType

import numpy as np

from confide.errors import RoundFailed
from confide.records import Arrays, Scalar, SparseArrays, TrainIns, TrainRes, Update
from confide.strategies.aggregate import apply_delta, coordinate_median, trimmed_mean, weighted_metrics
from confide.strategies.base import Aggregate, StrategyState, restore_stateless

Combine = Callable[[Sequence[Arrays]], dict[str, np.ndarray]]


class RobustAggregation:
    """Every site trains from the global model; the next model adds ``combine`` of all the round's updates."""

    def __init__(self, name: str, combine: Combine, train_config: Mapping[str, Scalar] | None = None) -> None:
        self.name = name
        self.combine = combine
        self.train_config = MappingProxyType(dict(train_config or {}))

    def configure(self, round: int, global_arrays: Arrays, sites: Sequence[str]) -> dict[str, TrainIns]:
        instruction = TrainIns(round=round, arrays=global_arrays, config=self.train_config)
        return {site: instruction for site in sites}

    def state(self) -> StrategyState:
        return StrategyState()

    def restore(self, state: StrategyState) -> None:
        restore_stateless(self.name, state)

    def aggregate(self, round: int, global_arrays: Arrays, results: Iterable[tuple[str, TrainRes]]) -> Aggregate:
        # A result's arrays are valid only until the next result is drawn (the transport reuses its buffer).
        kept: list[tuple[str, TrainRes]] = []
        updates: list[Arrays] = []
        for site, res in results:
            updates.append(_dense_copy(res.update))
            kept.append((site, replace(res, update=updates[-1])))
        if not kept:
            raise RoundFailed(f"round {round}: no update to aggregate")
        delta = self.combine(updates)
        return Aggregate(
            arrays=apply_delta(global_arrays, delta),
            sites=tuple(site for site, _ in kept),
            num_examples=sum(res.num_examples for _, res in kept),
            metrics=weighted_metrics((res.metrics, float(res.num_examples)) for _, res in kept),
        )


def _dense_copy(update: Update) -> Arrays:
    """A copy the strategy may keep; a sparse update's entries left out read as "no change" (zero)."""
    if isinstance(update, SparseArrays):
        return update.densify()
    return Arrays.from_dict(update.to_dict(), copy=True)


def fed_median(train_config: Mapping[str, Scalar] | None = None) -> RobustAggregation:
    return RobustAggregation("median", coordinate_median, train_config)


def fed_trimmed_mean(
    train_config: Mapping[str, Scalar] | None = None, *, trim_fraction: float = 0.2
) -> RobustAggregation:
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    return RobustAggregation("trimmed_mean", partial(trimmed_mean, trim_fraction=trim_fraction), train_config)
