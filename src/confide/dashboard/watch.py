"""The server loop's transport with the dashboard looking on: each training answer that passes is read for what
the site said of its update (the filters that ran and what they recorded, its examples, its metrics; a masked
update under secure aggregation carries the same in clear). Nothing is changed or held: the reply goes on to the
loop as it came, and a reply the dashboard cannot read is the loop's to reject, with its reason."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from confide import serde
from confide.dashboard.snapshot import Scalar, UpdateNote, finite
from confide.privacy.secagg_wire import TOPICS, MaskedTrainRes, unpack
from confide.records import Control, TrainRes
from confide.sanitize import one_line
from confide.serde import Encoded
from confide.transport.base import Reply, Transport

log = logging.getLogger(__name__)

SHOWN_CHARS = 500
"""A site's words (its filters' parameters) are cut to this many characters, on one line."""


def _note(
    round: int, masked: bool, examples: int, metrics: Mapping[str, float], meta: Mapping[str, Scalar]
) -> UpdateNote:
    filters = str(meta.get("filters", ""))
    return UpdateNote(
        round=round,
        masked=masked,
        num_examples=examples,
        filters=tuple(one_line(name, 100) for name in filters.split(",") if name),
        recorded={
            one_line(key, 100): one_line(value, SHOWN_CHARS) if isinstance(value, str) else value
            for key, value in meta.items()
            if key != "filters"
        },
        metrics={one_line(key, 100): finite(value) for key, value in metrics.items()},
    )


def note_of(record: object) -> UpdateNote | None:
    """What a decoded answer says of its update, or ``None`` for anything but a training answer."""
    if isinstance(record, TrainRes):
        return _note(record.round, False, record.num_examples, record.metrics, record.meta)
    if isinstance(record, Control) and record.topic == TOPICS[MaskedTrainRes]:
        res = unpack(record, MaskedTrainRes)
        return _note(record.round, True, res.num_examples, res.metrics, res.meta)
    return None


def _header(payload: bytes | memoryview) -> Any:
    """The answer's Confide header, read and checked by serde from the length prefix and JSON header alone."""
    return serde.read_header(payload)


def read_note(payload: bytes | memoryview) -> UpdateNote | None:
    """What an answer on the wire says of its update. A plain training answer is read from its header alone (its
    arrays are not touched: a sparse update's would take as long to decode as the loop's own decoding); a masked
    one (one array) is decoded whole, for secure aggregation's own reader."""
    header = _header(payload)
    if header.kind == "train_res":
        return _note(header.round, False, header.num_examples, header.metrics, header.meta)
    if header.kind == "control" and header.topic == TOPICS[MaskedTrainRes]:
        return note_of(serde.decode(payload))
    return None


class WatchedTransport:
    """``inner`` as the loop sees it; ``seen(site, note)`` hears of every training answer that passes, ``ended()``
    that the transport was closed (the run is over)."""

    def __init__(
        self, inner: Transport, seen: Callable[[str, UpdateNote], None], ended: Callable[[], None] = lambda: None
    ) -> None:
        self.inner = inner
        self.seen = seen
        self.ended = ended
        self.concurrent = inner.concurrent
        self._failed = False

    def sites(self) -> list[str]:
        return self.inner.sites()

    def exchange(self, messages: Mapping[str, bytes | Encoded], deadline_s: float | None = None) -> Iterator[Reply]:
        for reply in self.inner.exchange(messages, deadline_s):
            if reply.payload is not None:
                self._look(reply.site, reply.payload)  # before the loop asks for the next: the buffer is still this
            yield reply

    def _look(self, site: str, payload: bytes | memoryview) -> None:
        try:
            note = read_note(payload)
        except Exception:  # unreadable: the loop rejects it and says why (site_finished)
            return
        if note is None:
            return
        try:
            self.seen(site, note)
        except Exception:
            if not self._failed:  # the dashboard's bug is logged once; the round never hears of it
                self._failed = True
                log.exception("the dashboard failed to record an update; the round goes on")

    def notify(self, site: str, message: str) -> None:
        self.inner.notify(site, message)

    def close(self) -> None:
        self.inner.close()
        self.ended()

    def wait_for_sites(self, count: int, timeout_s: float) -> list[str]:
        """As the loop does without the watch: the inner transport's wait where it has one (a deployment), else a
        plain wait of ``timeout_s`` (the in-memory transport, whose sites never join late)."""
        wait = getattr(self.inner, "wait_for_sites", None)
        if callable(wait):
            present = wait(count, timeout_s)
            return list(present)
        time.sleep(timeout_s)
        return self.inner.sites()
