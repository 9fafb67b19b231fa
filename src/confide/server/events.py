"""Round events sent to several listeners at once (a progress display, a report's curve, a live dashboard, a
tracking store), each told in the order given. A listener that fails does not stop the round: its error is logged
once per listener and the others are still told."""

from __future__ import annotations

import logging
from collections.abc import Callable

from confide.records import Arrays
from confide.server.loop import RoundEvents, RoundResult

log = logging.getLogger(__name__)


class Fanout:
    """One :class:`RoundEvents` that tells every listener given (``None`` entries are left out)."""

    def __init__(self, *listeners: RoundEvents | None) -> None:
        self.listeners: list[RoundEvents] = [listener for listener in listeners if listener is not None]
        self._failed: set[int] = set()

    def _tell(self, call: Callable[[RoundEvents], None]) -> None:
        for listener in self.listeners:
            try:
                call(listener)
            except Exception:
                if id(listener) not in self._failed:  # a listener's bug is logged once, not every round
                    self._failed.add(id(listener))
                    log.exception("round listener %s failed; the round goes on", type(listener).__name__)

    def round_started(self, round: int, sites: list[str]) -> None:
        self._tell(lambda listener: listener.round_started(round, sites))

    def site_finished(self, round: int, site: str, ok: bool, detail: str) -> None:
        self._tell(lambda listener: listener.site_finished(round, site, ok, detail))

    def round_finished(self, result: RoundResult, global_arrays: Arrays) -> None:
        self._tell(lambda listener: listener.round_finished(result, global_arrays))
