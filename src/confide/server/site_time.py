"""How much of a round the sites' own work took, so that what is left is the coordination's.

Sites of one exchange either take turns (the in-memory simulator runs them one after another) or work at once (a
deployment). Taking turns, each site's time adds to the round's; working at once, only the slowest site's does.
A round of several exchanges (train, then evaluate; secure aggregation's five steps) adds up its exchanges.
"""

from __future__ import annotations

from collections.abc import Iterable


def exchange_seconds(seconds: Iterable[float], *, concurrent: bool) -> float:
    """The time one exchange's sites kept the round waiting: the slowest's when they work at once, else the sum."""
    values = [max(float(s), 0.0) for s in seconds]
    if not values:
        return 0.0
    return max(values) if concurrent else sum(values)


class SiteTime:
    """The sites' time in one round, exchange by exchange (see :func:`exchange_seconds`)."""

    def __init__(self, *, concurrent: bool) -> None:
        self.concurrent = concurrent
        self._exchanges: list[list[float]] = []

    def exchange(self) -> list[float]:
        """A new exchange's list: append each site's seconds to it as its reply arrives."""
        self._exchanges.append([])
        return self._exchanges[-1]

    @property
    def seconds(self) -> float:
        return sum(exchange_seconds(times, concurrent=self.concurrent) for times in self._exchanges)
