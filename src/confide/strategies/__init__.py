"""Strategies: how the server turns sites' updates into the next global model."""

from __future__ import annotations

from confide.strategies.base import Aggregate, Strategy
from confide.strategies.fedavg import FedAvg

__all__ = ["Aggregate", "FedAvg", "Strategy"]
