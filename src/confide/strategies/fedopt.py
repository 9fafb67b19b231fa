"""FedOpt (Reddi et al. 2021, "Adaptive Federated Optimization"): FedAdagrad, FedAdam and FedYogi.

The sites train as under FedAvg; the example-weighted mean of their updates is the round's pseudo-gradient
``delta``, and the server takes one step of an adaptive optimiser with it (per entry, no bias correction)::

    m = beta1 * m + (1 - beta1) * delta
    v = v + delta^2                                          (adagrad)
    v = beta2 * v + (1 - beta2) * delta^2                    (adam)
    v = v - (1 - beta2) * delta^2 * sign(v - delta^2)        (yogi)
    x = x + server_lr * m / (sqrt(v) + tau)

with ``m = 0`` and ``v = tau^2`` before the first round. Defaults: ``beta1=0.9``, ``beta2=0.99`` (unused by
adagrad), ``tau=1e-3`` (the adaptivity: it bounds the step where ``v`` is small), as the paper recommends, and a
server learning rate per variant, :data:`DEFAULT_SERVER_LR` (see its comment for how it was chosen). Arrays that are
not floating point (counters) take the mean update as FedAvg does, without optimiser.

Memory: ``m`` and ``v`` are two extra copies of the model's floating-point arrays, kept from round to round (and
saved with every checkpoint), besides FedAvg's accumulator, which becomes the next model.

The loop calls ``aggregate`` before its quorum check: a round that closes with fewer updates than the quorum is
discarded and retried after the moments have taken its step. With ``min_sites: 1`` (the default) that cannot
happen; with a larger quorum a retried round leaves the moments one step further than an unbroken run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np

from confide.errors import ConfideError
from confide.records import Arrays, Scalar, TrainIns, TrainRes
from confide.strategies.aggregate import apply_delta_in_place
from confide.strategies.base import Aggregate, StrategyState
from confide.strategies.fedavg import FedAvg, Missing

Variant = Literal["adam", "yogi", "adagrad"]
VARIANTS: tuple[Variant, ...] = ("adam", "yogi", "adagrad")

# The server learning rate when the job gives none, chosen as Reddi et al. chose theirs: on a log grid (0.01, 0.03,
# 0.1, 0.3, 1), per optimiser, on Confide's shipped jobs (bench/server_lr.py; README, "Strategies", has the numbers).
# Once m has filled, Adam and Yogi move each entry by about server_lr per round whatever the size of the sites'
# update; Adagrad's v keeps growing, so its step shrinks as 1/sqrt(round) and it needs about ten times the rate to
# cover the same ground in 20 rounds. At the old 0.01 for all three, FedAdagrad covered 3 % of FedAvg's distance
# on a generated table and stayed near its initial model's accuracy on the heart-disease table; about three times
# the chosen rates (FedAdam 0.1, FedAdagrad 1.0) drove the histopathology job's updates past the server's norm bound
# in 4 rounds.
DEFAULT_SERVER_LR: dict[str, float] = {"adam": 0.03, "yogi": 0.03, "adagrad": 0.3}


def server_lr_for(strategy: str, given: float | None) -> float:
    """The server learning rate strategy ``strategy`` (``fedadam``, ``fedyogi``, ``fedadagrad``) runs with: the
    job's ``given`` rate, else the variant's default. Strategies without a server optimiser ignore it (1.0)."""
    if given is not None:
        return given
    variant = strategy.removeprefix("fed")
    return DEFAULT_SERVER_LR.get(variant, 1.0)


class FedOpt:
    """FedAvg's mean update taken as a pseudo-gradient by a server optimiser; named ``fed<variant>``."""

    def __init__(
        self,
        train_config: Mapping[str, Scalar] | None = None,
        *,
        variant: Variant = "adam",
        server_lr: float | None = None,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        missing: Missing = "reported",
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"fedopt: variant must be one of {list(VARIANTS)}, got {variant!r}")
        if server_lr is None:
            server_lr = DEFAULT_SERVER_LR[variant]
        if not 0 < server_lr < float("inf"):
            raise ValueError(f"fed{variant}: server_lr must be > 0, got {server_lr}")
        for field, value in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= value < 1:
                raise ValueError(f"fed{variant}: {field} must be in [0, 1), got {value}")
        if not 0 < tau < float("inf"):
            raise ValueError(f"fed{variant}: tau must be > 0, got {tau}")
        self.name = f"fed{variant}"
        self.variant: Variant = variant
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau
        self.averager = FedAvg(train_config, missing=missing)
        self.m: dict[str, np.ndarray] | None = None
        self.v: dict[str, np.ndarray] | None = None
        self.rounds = 0

    def configure(self, round: int, global_arrays: Arrays, sites: Sequence[str]) -> dict[str, TrainIns]:
        return self.averager.configure(round, global_arrays, sites)

    def aggregate(self, round: int, global_arrays: Arrays, results: Iterable[tuple[str, TrainRes]]) -> Aggregate:
        mean = self.averager.mean_update(round, global_arrays, results)
        m, v = self._moments(global_arrays)
        for name, value in global_arrays.items():
            if np.issubdtype(value.dtype, np.floating):
                self._step(mean.delta[name], m[name], v[name])
        self.rounds += 1
        return Aggregate(
            arrays=apply_delta_in_place(global_arrays, mean.delta),
            sites=mean.sites,
            num_examples=mean.num_examples,
            metrics=mean.metrics,
        )

    def _step(self, delta: np.ndarray, m: np.ndarray, v: np.ndarray) -> None:
        """One optimiser step on one array, in place: ``delta`` leaves holding the step to add to the model."""
        m *= self.beta1
        m += (1 - self.beta1) * delta
        squared = np.square(delta, out=delta)
        if self.variant == "adagrad":
            v += squared
        elif self.variant == "adam":
            v *= self.beta2
            v += (1 - self.beta2) * squared
        else:
            squared *= np.sign(v - squared)
            squared *= 1 - self.beta2
            v -= squared
        step = np.sqrt(v, out=delta)
        step += self.tau
        np.divide(m, step, out=step)
        step *= self.server_lr

    def _moments(self, global_arrays: Arrays) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``m`` and ``v``, made on the first round; refused when they do not fit the model's float arrays."""
        floats = {name: value for name, value in global_arrays.items() if np.issubdtype(value.dtype, np.floating)}
        if self.m is None or self.v is None:
            if self.rounds and floats:
                raise ConfideError(f"{self.name}: the state of {self.rounds} round(s) holds no moments")
            self.m = {name: np.zeros(value.shape, value.dtype) for name, value in floats.items()}
            self.v = {name: np.full(value.shape, self.tau**2, value.dtype) for name, value in floats.items()}
        for moments in (self.m, self.v):
            fits = set(moments) == set(floats) and all(
                moments[name].shape == value.shape and moments[name].dtype == value.dtype
                for name, value in floats.items()
            )
            if not fits:
                raise ConfideError(f"{self.name}: the saved moments do not fit the model (names, shapes or dtypes)")
        return self.m, self.v

    def state(self) -> StrategyState:
        """The moments as read-only views (no copy of two models): valid until the next ``aggregate``."""
        kept: dict[str, np.ndarray] = {}
        if self.m is not None and self.v is not None:
            kept = {**{f"m/{k}": a for k, a in self.m.items()}, **{f"v/{k}": a for k, a in self.v.items()}}
        return StrategyState(scalars={"variant": self.variant, "rounds": self.rounds}, arrays=Arrays.from_dict(kept))

    def restore(self, state: StrategyState) -> None:
        variant, rounds = state.scalars.get("variant"), state.scalars.get("rounds")
        if variant != self.variant:
            raise ConfideError(
                f"the checkpoint's strategy state is not {self.name}'s: it is of variant {variant!r}, "
                f"not {self.variant!r}"
            )
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 0:
            raise ConfideError(f"the checkpoint's {self.name} state has no valid round count (got {rounds!r})")
        m: dict[str, np.ndarray] = {}
        v: dict[str, np.ndarray] = {}
        for key, value in state.arrays.items():
            kind, _, param = key.partition("/")
            if kind not in ("m", "v") or not param:
                raise ConfideError(f"the checkpoint's {self.name} state holds {key!r}, not an 'm/' or 'v/' moment")
            (m if kind == "m" else v)[param] = np.array(value, copy=True)
        if set(m) != set(v) or any(m[k].shape != v[k].shape or m[k].dtype != v[k].dtype for k in m):
            raise ConfideError(f"the checkpoint's {self.name} state does not hold matching 'm/' and 'v/' moments")
        self.rounds = rounds
        self.m, self.v = (m, v) if m else (None, None)
