"""FedAvg (McMahan et al. 2017): the next model adds the example-weighted mean of the sites' updates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np

from confide.errors import RoundFailed
from confide.records import Arrays, Scalar, SparseArrays, TrainIns, TrainRes
from confide.strategies.aggregate import (
    accumulate,
    accumulate_sparse,
    apply_delta_in_place,
    count_all,
    divide_by_counts,
    scale,
    weighted_metrics,
    zeros_like,
)
from confide.strategies.base import Aggregate, StrategyState, restore_stateless

Missing = Literal["reported", "zero"]


@dataclass(frozen=True)
class MeanUpdate:
    """One round's example-weighted mean update (``delta``: writable buffers, one per array) and its sources."""

    delta: dict[str, np.ndarray]
    sites: tuple[str, ...]
    num_examples: int
    metrics: Mapping[str, float]


class FedAvg:
    """Every site trains from the global model; updates are averaged with weights ``num_examples``.

    A sparse update (partial sharing) leaves entries out. ``missing="reported"`` averages each entry over the
    sites that sent it (an entry nobody sent does not change); ``missing="zero"`` reads an entry left out as
    "no change" and averages it in as zero. The "not reported" reading needs one more model-sized buffer (the
    weight each entry received), allocated only when a sparse update arrives.
    """

    name = "fedavg"

    def __init__(self, train_config: Mapping[str, Scalar] | None = None, *, missing: Missing = "reported") -> None:
        if missing not in ("reported", "zero"):
            raise ValueError(f"missing must be 'reported' or 'zero', got {missing!r}")
        self.train_config = MappingProxyType(dict(train_config or {}))
        self.missing = missing

    def configure(self, round: int, global_arrays: Arrays, sites: Sequence[str]) -> dict[str, TrainIns]:
        instruction = TrainIns(round=round, arrays=global_arrays, config=self.train_config)
        return {site: instruction for site in sites}

    def state(self) -> StrategyState:
        return StrategyState()

    def restore(self, state: StrategyState) -> None:
        restore_stateless(self.name, state)

    def aggregate(self, round: int, global_arrays: Arrays, results: Iterable[tuple[str, TrainRes]]) -> Aggregate:
        mean = self.mean_update(round, global_arrays, results)
        return Aggregate(
            arrays=apply_delta_in_place(global_arrays, mean.delta),
            sites=mean.sites,
            num_examples=mean.num_examples,
            metrics=mean.metrics,
        )

    def mean_update(self, round: int, global_arrays: Arrays, results: Iterable[tuple[str, TrainRes]]) -> MeanUpdate:
        """The streaming fold on its own: the example-weighted mean of the updates, in a buffer the caller owns
        (server optimisers such as FedOpt take it as their pseudo-gradient)."""
        acc = zeros_like(global_arrays)
        counts: dict[str, np.ndarray] | None = None
        total = 0
        sites: list[str] = []
        metric_items: list[tuple[Mapping[str, float], float]] = []
        for site, res in results:
            if res.num_examples <= 0:
                continue
            weight = float(res.num_examples)
            if isinstance(res.update, SparseArrays):
                if self.missing == "reported" and counts is None:
                    counts = {name: np.full(v.shape, float(total), np.float32) for name, v in acc.items()}
                accumulate_sparse(acc, res.update, weight, counts)
            else:
                accumulate(acc, res.update, weight)
                if counts is not None:
                    count_all(counts, weight)
            total += res.num_examples
            sites.append(site)
            metric_items.append((res.metrics, weight))
        if total == 0:
            raise RoundFailed(f"round {round}: no update with examples to aggregate")
        if counts is not None:
            divide_by_counts(acc, counts)
            del counts
        else:
            scale(acc, 1.0 / total)
        return MeanUpdate(delta=acc, sites=tuple(sites), num_examples=total, metrics=weighted_metrics(metric_items))
