"""What keeps one site from steering the model: a norm bound on every update, and a cap on the weight any one
site's update gets. The arithmetic is pure; :class:`UpdateGuard` only keeps what it needs between rounds.

**Norm bound.** A fixed bound (``federation.max_update_norm: <number>``) or, by default (``auto``), ``multiple`` times
the median norm of the updates accepted over the last ``window`` rounds. A round with no such history (the job's
first) calibrates first: the loop holds the first ``calibrate`` updates, takes ``multiple`` times their median as
the bound for the round, and checks them and every later update against it. One oversized update among three
cannot move the median; with fewer sites the bound is as weak as the arithmetic allows.

**Weights.** A site's ``num_examples`` is its own word. It is capped three ways before the strategy weighs it:
by ``federation.max_examples`` (when the job sets one); by the count the site gave the first time it was weighed in
this job (its data does not grow within a job); and so that no site holds more than ``max_share`` of the weight,
judged against the weights the other sites of the round last received. A capped count is noted, never refused.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class GuardFields(Protocol):
    """The job's fields the guard reads (``federation`` of the job file)."""

    @property
    def max_update_norm(self) -> float | str: ...
    @property
    def norm_multiple(self) -> float: ...
    @property
    def max_examples(self) -> int | None: ...
    @property
    def max_site_share(self) -> float: ...


@dataclass(frozen=True)
class GuardConfig:
    """``max_norm``: a fixed bound (``None``: derived from the updates, or none when ``auto_norm`` is off)."""

    max_norm: float | None = None
    auto_norm: bool = True
    multiple: float = 10.0
    window: int = 3
    calibrate: int = 3
    max_examples: int | None = None
    max_share: float = 0.5

    def __post_init__(self) -> None:
        if self.max_norm is not None and not self.max_norm > 0:
            raise ValueError(f"max_norm must be positive, got {self.max_norm}")
        if not self.multiple > 1:
            raise ValueError(f"the norm multiple must be above 1, got {self.multiple}")
        if self.window < 1 or self.calibrate < 1:
            raise ValueError("window and calibrate must be at least 1")
        if not 0 < self.max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1], got {self.max_share}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"max_examples must be at least 1, got {self.max_examples}")


def guard_config(fields: GuardFields) -> GuardConfig:
    """The guard a job asks for (``max_update_norm``: a number, ``auto`` or ``off``)."""
    bound = fields.max_update_norm
    return GuardConfig(
        max_norm=None if isinstance(bound, str) else float(bound),
        auto_norm=bound == "auto",
        multiple=fields.norm_multiple,
        max_examples=fields.max_examples,
        max_share=fields.max_site_share,
    )


OFF = GuardConfig(auto_norm=False, max_share=1.0)  # no bound, no share cap (tests of the bare loop)


def norm_bound(history: Iterable[float], multiple: float) -> float | None:
    """``multiple`` times the median of ``history`` (``None`` when there is none, or it is all zero)."""
    norms = [n for n in history if n > 0]
    # the lower median: with two sites, the smaller norm (one site's huge update must not set its own bound)
    return multiple * statistics.median_low(norms) if norms else None


def share_cap(others: float, max_share: float) -> float | None:
    """The largest weight that keeps one site at ``max_share`` of the total when the others weigh ``others``
    (``None``: no cap, when the share allows everything or there is nobody to compare with)."""
    if max_share >= 1.0 or others <= 0:
        return None
    return others * max_share / (1.0 - max_share)


@dataclass
class UpdateGuard:
    """The bound and caps of the running job; its state travels in the checkpoint."""

    config: GuardConfig
    norms: list[list[float]] = field(default_factory=list)  # accepted norms of the last ``window`` rounds
    first_count: dict[str, int] = field(default_factory=dict)  # each site's count the first time it was weighed
    last_weight: dict[str, int] = field(default_factory=dict)  # the weight each site last received
    _round_norms: list[float] = field(default_factory=list)
    _bound: float | None = None
    _weigh_first: bool = False

    # -- the norm bound ---------------------------------------------------------------------------
    def start_round(self, round_sites: Iterable[str]) -> None:
        self._round_norms = []
        self._bound = self.config.max_norm
        if self._bound is None and self.config.auto_norm:
            self._bound = norm_bound((n for r in self.norms for n in r), self.config.multiple)
        # nothing to weigh a count against yet: the first updates are held and weighed against each other
        self._weigh_first = self.config.max_share < 1 and not any(s in self.last_weight for s in round_sites)

    @property
    def calibrating(self) -> bool:
        """No bound (or no weights to compare with) yet for this round although one is wanted: the loop holds
        updates until :meth:`calibrate`."""
        return (self._bound is None and self.config.auto_norm) or self._weigh_first

    def calibration_size(self, expected: int) -> int:
        return max(1, min(self.config.calibrate, expected))

    def calibrate(self, norms: Iterable[float]) -> None:
        """This round's bound from the norms of the updates held for the purpose (when it has none)."""
        self._weigh_first = False
        if self._bound is None and self.config.auto_norm:
            bound = norm_bound(norms, self.config.multiple)
            self._bound = bound if bound is not None else float("inf")  # all-zero updates: nothing to scale from

    @property
    def bound(self) -> float | None:
        return self._bound

    def over_bound(self, norm: float) -> str | None:
        """Why an update of this norm is refused (``None``: it is within the bound)."""
        if self._bound is None or norm <= self._bound:
            return None
        how = "the job's bound" if self.config.max_norm is not None else "the bound derived from recent updates"
        return f"update norm {norm:.4g} exceeds {how} {self._bound:.4g}"

    # -- weights ----------------------------------------------------------------------------------
    def weight(self, site: str, reported: int, round_sites: Iterable[str]) -> tuple[int, str | None]:
        """The count the strategy may weigh ``site``'s update with, and why it is lower than reported, if it is."""
        caps: list[tuple[float, str]] = []
        if self.config.max_examples is not None:
            caps.append((self.config.max_examples, f"the job's max_examples {self.config.max_examples}"))
        if site in self.first_count:
            caps.append((self.first_count[site], f"its first report in this job ({self.first_count[site]})"))
        others = sum(self.last_weight.get(s, 0) for s in set(round_sites) if s != site)
        cap = share_cap(others, self.config.max_share)
        if cap is not None:
            caps.append((cap, f"a share of {self.config.max_share:.0%} against the other sites' {others} examples"))
        weight, why = reported, None
        for limit, reason in caps:
            if weight > limit:
                weight, why = max(1, int(limit)), reason
        note = None if why is None else f"num_examples {reported} capped at {weight}: {why}"
        return weight, note

    def presume(self, site: str, reported: int) -> None:
        """Before updates held together are weighed: judge each against the others' counts as reported (capped
        by the job and by their first reports), since none has been weighed before."""
        limits = [reported, self.config.max_examples, self.first_count.get(site)]
        self.last_weight[site] = max(1, min(x for x in limits if x is not None))

    def admitted(self, site: str, norm: float, weight: int) -> None:
        """An update went to the strategy with this norm and weight."""
        self._round_norms.append(norm)
        self.first_count.setdefault(site, weight)
        self.last_weight[site] = weight

    def end_round(self) -> None:
        if self._round_norms:
            self.norms = [*self.norms, self._round_norms][-self.config.window :]
        self._round_norms = []

    # -- checkpoint -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"norms": self.norms, "first_count": self.first_count, "last_weight": self.last_weight}

    def restore(self, state: Mapping[str, Any] | None) -> None:
        """The state saved with a checkpoint; anything unreadable is dropped (the next round calibrates again)."""
        if not isinstance(state, Mapping):
            return
        try:
            self.norms = [[float(n) for n in r] for r in state.get("norms", [])][-self.config.window :]
            self.first_count = {str(k): int(v) for k, v in dict(state.get("first_count", {})).items()}
            self.last_weight = {str(k): int(v) for k, v in dict(state.get("last_weight", {})).items()}
        except (TypeError, ValueError):
            self.norms, self.first_count, self.last_weight = [], {}, {}
