"""What the dashboard shows, as validated models: the JSON of ``/api/state`` and of every server-sent event, read
back by ``confide status``. A number that is not finite (a NaN loss) is ``None`` here, so the JSON stays JSON."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, JsonValue

Number = float | None
Scalar = str | bool | int | float
Mode = Literal["simulation", "deployment"]


def finite(value: object) -> Number:
    """``value`` as a float, or ``None`` when it is no finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Problem(_Frozen):
    """A site's last refusal, failure or rejected update, with the reason the server gave or heard."""

    round: int
    reason: str
    at: float  # seconds since the epoch


class UpdateNote(_Frozen):
    """What a site's last update said of itself (``TrainRes.meta`` and metrics, as the server received them): the
    filters that ran and what each recorded, its number of examples, its training metrics (none under DP)."""

    round: int
    masked: bool  # sent under secure aggregation
    num_examples: int
    filters: tuple[str, ...]
    recorded: dict[str, Scalar]
    metrics: dict[str, Number]


class SiteView(_Frozen):
    name: str
    connected: bool
    last_heard_s: Number  # seconds since it was last heard from, when the transport knows
    asked: int  # rounds it was asked to train in
    accepted: int  # rounds whose aggregate holds its update
    last_round: int | None
    problem: Problem | None
    update: UpdateNote | None


class RoundView(_Frozen):
    round: int
    status: Literal["running", "closed", "failed"]
    started_at: float
    seconds: Number = None
    site_seconds: Number = None
    coordination_seconds: Number = None
    asked: tuple[str, ...] = ()
    answered: int = 0
    accepted: tuple[str, ...] = ()
    failures: dict[str, str] = {}
    train_metrics: dict[str, Number] = {}
    eval_metrics: dict[str, dict[str, Number]] = {}
    # a simulation only: the new global model's mean score over the sites' test splits, every few rounds
    test_metrics: dict[str, Number] = {}


class Curve(_Frozen):
    name: str
    rounds: tuple[int, ...]
    values: tuple[Number, ...]


class LedgerPoint(_Frozen):
    round: int
    epsilon: float  # the site's total after this round
    spent: float  # what this round added to it


class LedgerView(_Frozen):
    site: str
    delta: Number
    budget: Number
    points: tuple[LedgerPoint, ...]


class PrivacyView(_Frozen):
    """``ledgers``: the sites' own ledgers (a simulation holds them in its process); ``reported``: the epsilon each
    site sent with its updates (all a deployed server can know); ``none``: nothing to show, ``note`` says why."""

    source: Literal["ledgers", "reported", "none"]
    note: str
    ledgers: tuple[LedgerView, ...] = ()


class Refusal(_Frozen):
    """A connection the transport refused (a certificate unknown, revoked or not on the roster)."""

    who: str
    reason: str
    seconds_ago: float


class Snapshot(_Frozen):
    version: int
    mode: Mode
    job_name: str
    status: str
    rounds_planned: int
    rounds_closed: int
    current_round: int | None
    started_at: float
    taken_at: float
    sites: tuple[SiteView, ...]
    rounds: tuple[RoundView, ...]
    curves: tuple[Curve, ...]
    privacy: PrivacyView
    refused: tuple[Refusal, ...]
    job: dict[str, JsonValue]
