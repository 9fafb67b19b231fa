"""FedAvg (McMahan et al. 2017): the next model adds the example-weighted mean of the sites' updates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from confide.errors import RoundFailed
from confide.records import Arrays, Scalar, TrainIns, TrainRes
from confide.strategies.aggregate import accumulate, apply_delta_in_place, scale, weighted_metrics, zeros_like
from confide.strategies.base import Aggregate, StrategyState, restore_stateless


class FedAvg:
    """Every site trains from the global model; updates are averaged with weights ``num_examples``."""

    name = "fedavg"

    def __init__(self, train_config: Mapping[str, Scalar] | None = None) -> None:
        self.train_config = MappingProxyType(dict(train_config or {}))

    def configure(self, round: int, global_arrays: Arrays, sites: Sequence[str]) -> dict[str, TrainIns]:
        instruction = TrainIns(round=round, arrays=global_arrays, config=self.train_config)
        return {site: instruction for site in sites}

    def state(self) -> StrategyState:
        return StrategyState()

    def restore(self, state: StrategyState) -> None:
        restore_stateless(self.name, state)

    def aggregate(self, round: int, global_arrays: Arrays, results: Iterable[tuple[str, TrainRes]]) -> Aggregate:
        acc = zeros_like(global_arrays)
        total = 0
        sites: list[str] = []
        metric_items: list[tuple[Mapping[str, float], float]] = []
        for site, res in results:
            if res.num_examples <= 0:
                continue
            accumulate(acc, res.update, float(res.num_examples))
            total += res.num_examples
            sites.append(site)
            metric_items.append((res.metrics, float(res.num_examples)))
        if total == 0:
            raise RoundFailed(f"round {round}: no update with examples to aggregate")
        scale(acc, 1.0 / total)
        return Aggregate(
            arrays=apply_delta_in_place(global_arrays, acc),
            sites=tuple(sites),
            num_examples=total,
            metrics=weighted_metrics(metric_items),
        )
