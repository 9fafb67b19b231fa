"""Round events sent to several listeners at once: the job's own listener (the simulator's recorder, a
deployment's rounds.json) and observers (a live dashboard, a tracking store), each told in the order given.

The job's own listener is part of the job: its error ends the job, as it would without observers. An observer
that fails does not stop the round: its error is logged once and the others are still told."""

from __future__ import annotations

import logging
from collections.abc import Callable

from confide.records import Arrays
from confide.server.loop import RoundEvents, RoundResult

log = logging.getLogger(__name__)


class Fanout:
    """One :class:`RoundEvents` that tells ``primary`` (errors raised) and then every observer (errors logged);
    ``None`` entries are left out."""

    def __init__(self, primary: RoundEvents | None, *observers: RoundEvents | None) -> None:
        self.primary = primary
        self.observers: list[RoundEvents] = [observer for observer in observers if observer is not None]
        self._failed: set[int] = set()

    def _tell(self, call: Callable[[RoundEvents], None]) -> None:
        if self.primary is not None:
            call(self.primary)
        for observer in self.observers:
            try:
                call(observer)
            except Exception:
                if id(observer) not in self._failed:  # an observer's bug is logged once, not every round
                    self._failed.add(id(observer))
                    log.exception("round observer %s failed; the round goes on", type(observer).__name__)

    def round_started(self, round: int, sites: list[str]) -> None:
        self._tell(lambda listener: listener.round_started(round, sites))

    def site_finished(self, round: int, site: str, ok: bool, detail: str) -> None:
        self._tell(lambda listener: listener.site_finished(round, site, ok, detail))

    def round_finished(self, result: RoundResult, global_arrays: Arrays) -> None:
        self._tell(lambda listener: listener.round_finished(result, global_arrays))
