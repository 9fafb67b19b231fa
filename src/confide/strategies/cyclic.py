"""Cyclic (sequential) training: one site trains per round, in turn; its update is applied as it is.

The turn passes along the connected sites in the order of their names, wrapping round: the site after the one
that trained last (the first by name in round 1). With a fixed set of sites, round ``r`` is the turn of
``sorted(sites)[(r - 1) % n]``; a site that leaves is skipped, one that joins takes its place in the order. When
the site whose turn it was fails and the loop retries the round, the turn passes to the next site.

Only the site whose turn it is receives an instruction, so a round closes with one update: the job's quorum
must be one (``min_sites: 1``, the default; the job file refuses another value with this strategy). The position
in the cycle (the site that trained last and the number of turns taken) is the strategy's state, checkpointed
so that a resumed run goes on with the right site.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from confide.errors import ConfideError, RoundFailed
from confide.records import Arrays, Scalar, SparseArrays, TrainIns, TrainRes
from confide.strategies.aggregate import accumulate, accumulate_sparse, apply_delta_in_place, zeros_like
from confide.strategies.base import Aggregate, StrategyState


class Cyclic:
    """Each round, the next site in the cycle trains from the global model; the next model adds its update."""

    name = "cyclic"

    def __init__(self, train_config: Mapping[str, Scalar] | None = None) -> None:
        self.train_config = MappingProxyType(dict(train_config or {}))
        self.last_site: str | None = None
        self.turns = 0
        self._offered: tuple[int, str] | None = None  # (round, site) last configured: a retry moves past it

    def next_site(self, sites: Sequence[str], after: str | None) -> str:
        """The first site by name after ``after``, wrapping round to the first of all."""
        ordered = sorted(sites)
        later = [site for site in ordered if after is not None and site > after]
        return later[0] if later else ordered[0]

    def configure(self, round: int, global_arrays: Arrays, sites: Sequence[str]) -> dict[str, TrainIns]:
        if not sites:
            return {}
        after = self.last_site
        if self._offered is not None and self._offered[0] == round:
            after = self._offered[1]
        site = self.next_site(sites, after)
        self._offered = (round, site)
        return {site: TrainIns(round=round, arrays=global_arrays, config=self.train_config)}

    def aggregate(self, round: int, global_arrays: Arrays, results: Iterable[tuple[str, TrainRes]]) -> Aggregate:
        delta = zeros_like(global_arrays)
        taken: tuple[str, TrainRes] | None = None
        for site, res in results:
            if taken is not None:
                raise RoundFailed(f"round {round}: cyclic training takes one update, got {taken[0]!r} and {site!r}")
            if isinstance(res.update, SparseArrays):  # an entry left out: no change
                accumulate_sparse(delta, res.update, 1.0)
            else:
                accumulate(delta, res.update, 1.0)
            taken = (site, res)
        if taken is None:
            raise RoundFailed(f"round {round}: the site whose turn it was sent no update")
        site, res = taken
        self.last_site = site
        self.turns += 1
        self._offered = None
        return Aggregate(
            arrays=apply_delta_in_place(global_arrays, delta),
            sites=(site,),
            num_examples=res.num_examples,
            metrics=dict(res.metrics),
        )

    def state(self) -> StrategyState:
        scalars: dict[str, float | int | str] = {"turns": self.turns}
        if self.last_site is not None:
            scalars["last_site"] = self.last_site
        return StrategyState(scalars=scalars)

    def restore(self, state: StrategyState) -> None:
        turns, last = state.scalars.get("turns"), state.scalars.get("last_site")
        if not isinstance(turns, int) or turns < 0 or len(state.arrays) or set(state.scalars) - {"turns", "last_site"}:
            raise ConfideError("the checkpoint's strategy state is not cyclic's (a turn count and the last site)")
        if (turns == 0) != (last is None) or (last is not None and not isinstance(last, str)):
            raise ConfideError(f"the checkpoint's cyclic state is inconsistent: {turns} turn(s), last site {last!r}")
        self.turns = turns
        self.last_site = last
        self._offered = None
