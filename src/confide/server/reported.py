"""What a site says of its own update, as the server receives it: the round, its examples, its training metrics and
the meta its privacy chain recorded (the filters that ran, what each recorded, the epsilon and delta of the site's
ledger). These are the site's words: the server cannot check them (the ledger stays at the site).

:func:`read_reported` reads them off an answer on the wire for an observer that must not slow the round (the live
dashboard, tracking): a plain training answer from its header alone, its arrays untouched. Under secure aggregation
the masked update (one array) carries the same fields in clear, read by secure aggregation's own reader."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from confide import serde
from confide.privacy.secagg_wire import TOPICS, MaskedTrainRes, unpack
from confide.records import Control, Metrics, Scalar, TrainRes


@dataclass(frozen=True)
class ReportedUpdate:
    """A training answer's own account of itself (``TrainRes`` without its update, or a masked one's clear part)."""

    round: int
    masked: bool  # sent under secure aggregation
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    meta: Mapping[str, Scalar] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    @property
    def epsilon(self) -> float | None:
        """The epsilon the site reported (``meta["epsilon"]``: its ledger's total so far), or ``None`` when it
        reported none, or something that is no finite number."""
        return _number(self.meta.get("epsilon"))

    @property
    def delta(self) -> float | None:
        """The delta of the site's ledger, as it reported it (``meta["delta"]``)."""
        return _number(self.meta.get("delta"))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def reported_of(record: object) -> ReportedUpdate | None:
    """What a decoded answer says of its update, or ``None`` for anything but a training answer (plain or masked).
    A masked answer that secure aggregation's reader refuses raises its PayloadError."""
    if isinstance(record, TrainRes):
        return ReportedUpdate(record.round, False, record.num_examples, record.metrics, record.meta)
    if isinstance(record, Control) and record.topic == TOPICS[MaskedTrainRes]:
        res = unpack(record, MaskedTrainRes)
        return ReportedUpdate(record.round, True, res.num_examples, res.metrics, res.meta)
    return None


def read_reported(payload: bytes | memoryview) -> ReportedUpdate | None:
    """What an answer on the wire says of its update (``None``: it is no training answer). A plain training answer
    is read from its length prefix and JSON header alone (its arrays are not touched: a sparse update's would take
    as long to decode as the loop's own decoding); a masked one (one array, decoded as views of the payload, no
    copy) is read by secure aggregation's own reader. Raises :class:`~confide.errors.PayloadError` on an answer
    that cannot be read: the loop rejects it and says why."""
    header = serde.read_header(payload)
    if header.kind == "train_res":
        return ReportedUpdate(header.round, False, header.num_examples, header.metrics, header.meta)
    if header.kind == "control" and header.topic == TOPICS[MaskedTrainRes]:
        return reported_of(serde.decode(payload))
    return None
