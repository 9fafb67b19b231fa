"""FedBN (Li et al. 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch Normalization").

Normalisation layers stay at the sites: the instruction asks each site to keep its own (``keep_local_norm``), and
the server averages every other array as FedAvg does while leaving the named normalisation arrays of the global
model untouched, whatever a site sends for them (a site following the protocol sends zeros). The global model's
normalisation arrays are therefore only a starting point; each site evaluates the global model with its own
(see :meth:`confide.tasks.local_rules.SiteMemory.personal`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from confide.records import Arrays, Scalar, SparseArrays, TrainIns, TrainRes
from confide.strategies.base import Aggregate, StrategyState, restore_stateless
from confide.strategies.fedavg import FedAvg, Missing


def _without(update: Arrays | SparseArrays, local: frozenset[str]) -> Arrays | SparseArrays:
    """The update with the kept-local arrays zeroed (dense) or emptied (sparse): they never reach the mean."""
    if isinstance(update, SparseArrays):
        return update.without(local)
    return Arrays.from_dict({name: (value * 0 if name in local else value) for name, value in update.items()})


class FedBN:
    """FedAvg over every array but the normalisation layers named in ``local_names``."""

    name = "fedbn"

    def __init__(
        self,
        train_config: Mapping[str, Scalar] | None = None,
        *,
        local_names: Iterable[str],
        missing: Missing = "reported",
    ) -> None:
        self.local_names = frozenset(local_names)
        if not self.local_names:
            raise ValueError("fedbn: the model has no normalisation layer to keep at the sites (use fedavg)")
        self.averager = FedAvg({**(train_config or {}), "keep_local_norm": True}, missing=missing)

    @property
    def train_config(self) -> Mapping[str, Scalar]:
        return self.averager.train_config

    def configure(self, round: int, global_arrays: Arrays, sites: Sequence[str]) -> dict[str, TrainIns]:
        unknown = sorted(self.local_names - set(global_arrays.names()))
        if unknown:
            raise ValueError(f"fedbn: normalisation arrays not in the model: {unknown[:5]}")
        return self.averager.configure(round, global_arrays, sites)

    def aggregate(self, round: int, global_arrays: Arrays, results: Iterable[tuple[str, TrainRes]]) -> Aggregate:
        def kept(items: Iterable[tuple[str, TrainRes]]) -> Iterator[tuple[str, TrainRes]]:
            for site, res in items:
                yield (
                    site,
                    TrainRes(
                        round=res.round,
                        update=_without(res.update, self.local_names),
                        num_examples=res.num_examples,
                        metrics=res.metrics,
                    ),
                )

        return self.averager.aggregate(round, global_arrays, kept(results))

    def state(self) -> StrategyState:
        return StrategyState()

    def restore(self, state: StrategyState) -> None:
        restore_stateless(self.name, state)
