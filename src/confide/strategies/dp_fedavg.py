"""DP-FedAvg (McMahan et al. 2018): every site's update counts the same, clipped to norm S; the sum carries
Gaussian noise of standard deviation z * S, added by the sites (distributed) or here (central, trusted server).

Example weights are not used: with them a site's influence, and so the sensitivity of the sum, would depend on a
number the site reports. At ``placement="server"`` the server clips every update again (a site that skipped its
clipping cannot raise the sensitivity) and draws the noise from a generator keyed from the operating system's CSPRNG
for each round (never from the job's seed: a site that knew the noise could remove it from the aggregate and, with
the other sites' sum, recover another site's update). No noise state is saved with checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import numpy as np

from confide.errors import RoundFailed
from confide.privacy.gaussian import Placement, clip_to_norm, float_part
from confide.privacy.secret_random import secret_generator
from confide.records import Arrays, Scalar, SparseArrays, TrainIns, TrainRes
from confide.strategies.aggregate import (
    accumulate,
    accumulate_sparse,
    apply_delta_in_place,
    scale,
    weighted_metrics,
    zeros_like,
)
from confide.strategies.base import Aggregate, StrategyState


class DPFedAvg:
    name = "dp_fedavg"

    def __init__(
        self,
        train_config: Mapping[str, Scalar] | None = None,
        *,
        clip: float,
        noise_multiplier: float,
        placement: Placement = "site",
    ) -> None:
        if not clip > 0 or not noise_multiplier > 0:
            raise ValueError(f"dp_fedavg: clip and noise_multiplier must be > 0, got {clip}, {noise_multiplier}")
        if placement not in ("site", "server"):
            raise ValueError(f"dp_fedavg: placement must be 'site' or 'server', got {placement!r}")
        self.train_config = MappingProxyType(dict(train_config or {}))
        self.clip = clip
        self.noise_multiplier = noise_multiplier
        self.placement = placement

    def configure(self, round: int, global_arrays: Arrays, sites: Sequence[str]) -> dict[str, TrainIns]:
        instruction = TrainIns(round=round, arrays=global_arrays, config=self.train_config)
        return {site: instruction for site in sites}

    def aggregate(self, round: int, global_arrays: Arrays, results: Iterable[tuple[str, TrainRes]]) -> Aggregate:
        acc = zeros_like(global_arrays)
        sites: list[str] = []
        metric_items: list[tuple[Mapping[str, float], float]] = []
        examples = 0
        for site, res in results:
            update = res.update
            if isinstance(update, SparseArrays):  # shared after the noise: an entry left out adds nothing
                if self.placement == "server":
                    update = _clip_sparse(update, self.clip)
                accumulate_sparse(acc, update, 1.0)
            else:
                if self.placement == "server":
                    update = clip_to_norm(float_part(update), self.clip)[0]
                accumulate(acc, update, 1.0)
            sites.append(site)
            examples += res.num_examples
            metric_items.append((res.metrics, float(res.num_examples)))
        if not sites:
            raise RoundFailed(f"round {round}: no update to aggregate")
        if self.placement == "server":
            std = self.noise_multiplier * self.clip
            rng = secret_generator()
            for name, value in acc.items():
                if not np.issubdtype(global_arrays[name].dtype, np.floating):
                    continue  # integer arrays carry no noise: the sites send them as no change
                value += rng.normal(0.0, std, size=value.shape).astype(value.dtype)
        scale(acc, 1.0 / len(sites))
        return Aggregate(
            arrays=apply_delta_in_place(global_arrays, acc),
            sites=tuple(sites),
            num_examples=examples,
            metrics=weighted_metrics(metric_items),
        )

    def state(self) -> StrategyState:
        return StrategyState()

    def restore(self, state: StrategyState) -> None:
        if len(state.arrays):
            raise RoundFailed("the checkpoint's strategy state is not dp_fedavg's (it holds arrays)")
        # an older checkpoint's saved noise generator state ("rng") is ignored: the noise is secret now


def _clip_sparse(update: SparseArrays, clip: float) -> SparseArrays:
    norm = math.sqrt(sum(float(np.vdot(v, v)) for v in update.values.values()))
    if norm <= clip:
        return update
    factor = clip / norm
    values = Arrays.from_dict({n: v * v.dtype.type(factor) for n, v in update.values.items()})
    return SparseArrays(update.shapes, update.indices, values)
