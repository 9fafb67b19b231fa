"""How a running federation is followed (by the live dashboard): the simulator and the deployment hand a
:class:`Watcher` their transport, what the transport knows of the sites, and the sites' ledgers where they hold
them; they get back the transport the server loop is to use and the round events to tell."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from confide.privacy.ledger import Ledger
from confide.server.loop import RoundEvents
from confide.transport.base import Transport


class SiteContacts(Protocol):
    """What a transport knows of the sites beyond who is connected (read-only; called from the dashboard's
    thread, so each call takes the transport's own lock, if any, briefly)."""

    def last_heard(self) -> Mapping[str, float]:
        """Seconds since each site that ever joined was last heard from."""
        ...

    def refused_callers(self) -> Sequence[tuple[str, str, float]]:
        """The last few connections refused, oldest first: who (address, certificate), why, seconds ago."""
        ...


@dataclass(frozen=True)
class Followed:
    transport: Transport  # the one the server loop uses: the given one, its replies observed on their way
    events: RoundEvents  # to be told with the loop's other listeners (server/events.py: Fanout)


class Watcher(Protocol):
    def follow(
        self,
        transport: Transport,
        contacts: SiteContacts | None = None,
        ledgers: Mapping[str, Ledger] | None = None,
    ) -> Followed:
        """Start following a federation served over ``transport``. ``ledgers``: each site's own ledger, where this
        process holds them (a simulation); a deployed server has none and shows what the sites report."""
        ...

    def scored(self, round: int, metrics: Mapping[str, float]) -> None:
        """A simulation scored round ``round``'s global model on the sites' test splits: ``metrics``, their mean
        (a deployed server holds no test split and never calls this)."""
        ...
