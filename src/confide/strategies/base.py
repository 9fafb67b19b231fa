"""The strategy interface: configure a round, then aggregate its results."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from confide.errors import ConfideError
from confide.records import Arrays, TrainIns, TrainRes


@dataclass(frozen=True)
class Aggregate:
    """What a strategy produced from one round's accepted updates."""

    arrays: Arrays
    sites: tuple[str, ...]
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StrategyState:
    """What a strategy carries from round to round (server momentum, control variates, a position in a cycle):
    saved with every checkpoint and restored on resume. Stateless strategies have the empty state."""

    scalars: Mapping[str, float | int | str] = field(default_factory=dict)
    arrays: Arrays = field(default_factory=lambda: Arrays(()))

    @property
    def empty(self) -> bool:
        return not self.scalars and len(self.arrays) == 0


class Strategy(Protocol):
    """Decides what each site does in a round and how their updates become the next global model."""

    name: str

    def configure(self, round: int, global_arrays: Arrays, sites: Sequence[str]) -> dict[str, TrainIns]:
        """The instruction each selected site receives this round."""
        ...

    def aggregate(self, round: int, global_arrays: Arrays, results: Iterable[tuple[str, TrainRes]]) -> Aggregate:
        """Fold results into the next global model. ``results`` may be a generator: consume it once,
        folding each result as it arrives, so memory does not grow with the number of sites. A result's
        arrays are valid only until the next result is drawn; a strategy that keeps them copies them."""
        ...

    def state(self) -> StrategyState:
        """The state to checkpoint after a round."""
        ...

    def restore(self, state: StrategyState) -> None:
        """Take back the state of a checkpoint (on resume); refuse one that is not this strategy's."""
        ...


def restore_stateless(name: str, state: StrategyState) -> None:
    """``restore`` of a strategy without state: only the empty state is its own."""
    if not state.empty:
        raise ConfideError(f"the checkpoint carries strategy state that {name} does not keep: it was another strategy")
