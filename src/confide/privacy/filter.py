"""The privacy filter protocol and the chain that runs filters on an update before it leaves a site.

The chain is ordered and fails closed: if any filter raises, the update is blocked with a
:class:`~confide.errors.PrivacyError` that names the filter; nothing unfiltered is returned.
Each filter's name is recorded in the update's ``meta`` (``filters``), in the order they ran.

Filters draw their randomness from the generator they are given; the chain gives them one keyed afresh from the
operating system's CSPRNG for every update (:func:`~confide.privacy.secret_random.secret_generator`), never one
derived from the job, the site's name or the round. Passing a seeded generator is for tests of a filter's maths.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np

from confide.errors import PrivacyError
from confide.privacy.gaussian import GaussianClientDP
from confide.privacy.secret_random import secret_generator
from confide.privacy.spend import Spend
from confide.records import TrainRes


class Filter(Protocol):
    """Transforms an outgoing update. Must check its arguments in ``__init__`` and raise on any doubt."""

    name: str

    def apply(self, res: TrainRes, rng: np.random.Generator) -> TrainRes: ...


class FilterChain:
    """Runs filters in order on an outgoing update and records which ran."""

    def __init__(self, filters: Sequence[Filter] = ()) -> None:
        for item in filters:
            if not isinstance(getattr(item, "name", None), str) or not callable(getattr(item, "apply", None)):
                raise PrivacyError(f"{item!r} is not a privacy filter (needs a name and an apply method)")
        self.filters = tuple(filters)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.filters)

    @property
    def private(self) -> bool:
        """Whether a mechanism of the chain spends privacy (so the update is differentially private)."""
        return any(bool(getattr(item, "spends_privacy", False)) for item in self.filters)

    def spends(self, contributors: int | None = None) -> list[Spend]:
        """What the chain's differentially private mechanisms will spend on one update, in order. ``contributors``:
        under secure aggregation, the fewest updates in any sum the server can unmask."""
        out: list[Spend] = []
        for item in self.filters:
            spend = getattr(item, "spend", None)
            if callable(spend):
                out.append(spend(contributors) if isinstance(item, GaussianClientDP) else spend())
        return out

    def apply(self, res: TrainRes, rng: np.random.Generator | None = None) -> TrainRes:
        """The update after every filter, in order. ``rng`` is for tests only: by default the filters draw from a
        generator keyed from the OS CSPRNG for this update alone."""
        current = res
        if not self.filters:  # nothing draws randomness: no generator to key
            return replace(current, meta={**current.meta, "filters": "", "filter_params": "[]"})
        source = secret_generator() if rng is None else rng
        for item in self.filters:
            try:
                out = item.apply(current, source)
            except Exception as exc:
                raise PrivacyError(f"privacy filter {item.name!r} failed, update blocked: {exc}") from exc
            if not isinstance(out, TrainRes):
                raise PrivacyError(f"privacy filter {item.name!r} returned {type(out).__name__}, update blocked")
            current = out
        history = ",".join(self.names)
        return replace(current, meta={**current.meta, "filters": history, "filter_params": self.describe()})

    def describe(self) -> str:
        """Every filter's name, parameters and spend per update, as JSON (recorded with the update)."""
        out = []
        for item in self.filters:
            spend = getattr(item, "spend", None)
            if callable(spend):
                cost = spend()
                out.append(
                    {
                        "name": item.name,
                        "params": dict(cost.params),
                        "epsilon": cost.epsilon,
                        "noise_multiplier": cost.noise_multiplier,
                    }
                )
            else:
                simple = {k: v for k, v in vars(item).items() if isinstance(v, int | float | str | bool)}
                out.append({"name": item.name, "params": simple, "epsilon": 0.0, "noise_multiplier": 0.0})
        return json.dumps(out, sort_keys=True)
