"""The server loop's transport with the dashboard looking on: each training answer that passes is read (once, by
:mod:`confide.server.observed`, which tracking listens to as well) for what the site said of its update (the
filters that ran and what they recorded, its examples, its metrics; a masked update under secure aggregation
carries the same in clear), and made the note the dashboard shows: a site's words cut and put on one line."""

from __future__ import annotations

from collections.abc import Callable

from confide.dashboard.snapshot import UpdateNote, finite
from confide.sanitize import one_line
from confide.server.observed import ObservedTransport, observe
from confide.server.reported import ReportedUpdate, read_reported, reported_of
from confide.transport.base import Transport

SHOWN_CHARS = 500
"""A site's words (its filters' parameters) are cut to this many characters, on one line."""


def note(update: ReportedUpdate) -> UpdateNote:
    """What the dashboard shows of a site's account of its update."""
    filters = str(update.meta.get("filters", ""))
    return UpdateNote(
        round=update.round,
        masked=update.masked,
        num_examples=update.num_examples,
        filters=tuple(one_line(name, 100) for name in filters.split(",") if name),
        recorded={
            one_line(key, 100): one_line(value, SHOWN_CHARS) if isinstance(value, str) else value
            for key, value in update.meta.items()
            if key != "filters"
        },
        metrics={one_line(key, 100): finite(value) for key, value in update.metrics.items()},
    )


def note_of(record: object) -> UpdateNote | None:
    """What a decoded answer says of its update, or ``None`` for anything but a training answer."""
    update = reported_of(record)
    return None if update is None else note(update)


def read_note(payload: bytes | memoryview) -> UpdateNote | None:
    """What an answer on the wire says of its update, read as :func:`confide.server.reported.read_reported` reads
    it (a plain answer from its header alone)."""
    update = read_reported(payload)
    return None if update is None else note(update)


class UpdateNotes:
    """A :class:`~confide.server.observed.ReplyListener` for the dashboard: ``seen(site, note)`` hears of every
    training answer that passes, ``ended()`` that the transport was closed (the run is over)."""

    def __init__(self, seen: Callable[[str, UpdateNote], None], ended: Callable[[], None] = lambda: None) -> None:
        self.seen = seen
        self._ended = ended

    def heard(self, site: str, update: ReportedUpdate) -> None:
        self.seen(site, note(update))

    def ended(self) -> None:
        self._ended()


def watched(
    transport: Transport, seen: Callable[[str, UpdateNote], None], ended: Callable[[], None] = lambda: None
) -> ObservedTransport:
    """``transport`` as the loop is to see it, the dashboard told of every training answer (an observed transport,
    tracking's, gains the dashboard as one more listener: each answer is still read once)."""
    return observe(transport, UpdateNotes(seen, ended))
