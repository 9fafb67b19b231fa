"""Strategies: how the server turns sites' updates into the next global model."""

from __future__ import annotations

from confide.strategies.base import Aggregate, Strategy
from confide.strategies.fedavg import FedAvg
from confide.strategies.robust import RobustAggregation, fed_median, fed_trimmed_mean

__all__ = ["Aggregate", "FedAvg", "RobustAggregation", "Strategy", "fed_median", "fed_trimmed_mean", "make_strategy"]


def make_strategy(name: str, train_config: dict[str, float | int], *, trim_fraction: float = 0.2) -> Strategy:
    """The strategy a job names, with the instruction every site receives."""
    if name == "fedavg":
        return FedAvg(train_config)
    if name == "median":
        return fed_median(train_config)
    if name == "trimmed_mean":
        return fed_trimmed_mean(train_config, trim_fraction=trim_fraction)
    raise ValueError(f"unknown strategy {name!r}")
