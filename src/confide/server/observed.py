"""The server loop's transport with observers listening: each training answer that passes is read once for what
its site said of its update (:mod:`confide.server.reported`) and told to every listener (the live dashboard,
tracking). Nothing is changed or held: the reply goes on to the loop as it came, and a reply that cannot be read
is the loop's to reject, with its reason. A listener that fails is logged once and never reaches the round."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Protocol

from confide.serde import Encoded
from confide.server.reported import ReportedUpdate, read_reported
from confide.transport.base import Reply, Transport

log = logging.getLogger(__name__)


class ReplyListener(Protocol):
    """Hears of the training answers that pass a transport. Called on the loop's thread while the reply's buffer
    is still the reply's, so each call must be quick (a few assignments under a lock: no I/O)."""

    def heard(self, site: str, update: ReportedUpdate) -> None:
        """``site`` sent a training answer that says ``update`` of itself (before the server's checks: a site
        spends its privacy on an update whether or not the server then accepts it)."""
        ...

    def ended(self) -> None:
        """The transport was closed: the run is over."""
        ...


class ObservedTransport:
    """``inner`` as the loop sees it, each training answer read once and told to every one of ``listeners``."""

    def __init__(self, inner: Transport, *listeners: ReplyListener) -> None:
        self.inner = inner
        self.listeners = listeners
        self.concurrent = inner.concurrent
        self._failed: set[int] = set()

    def sites(self) -> list[str]:
        return self.inner.sites()

    def exchange(self, messages: Mapping[str, bytes | Encoded], deadline_s: float | None = None) -> Iterator[Reply]:
        for reply in self.inner.exchange(messages, deadline_s):
            if reply.payload is not None and self.listeners:
                self._read(reply.site, reply.payload)  # before the loop asks for the next: the buffer is still this
            yield reply

    def _read(self, site: str, payload: bytes | memoryview) -> None:
        try:
            update = read_reported(payload)
        except Exception:  # unreadable: the loop rejects it and says why (site_finished)
            return
        if update is not None:
            for listener in self.listeners:
                try:
                    listener.heard(site, update)
                except Exception:
                    self._failure(listener, "an update")

    def _failure(self, listener: ReplyListener, what: str) -> None:
        if id(listener) not in self._failed:  # a listener's bug is logged once; the round never hears of it
            self._failed.add(id(listener))
            log.exception("%s failed to record %s; the round goes on", type(listener).__name__, what)

    def notify(self, site: str, message: str) -> None:
        self.inner.notify(site, message)

    def close(self) -> None:
        self.inner.close()
        for listener in self.listeners:
            try:
                listener.ended()
            except Exception:
                self._failure(listener, "the run's end")

    def wait_for_sites(self, count: int, timeout_s: float) -> list[str]:
        """As the loop does without observers: the inner transport's wait where it has one (a deployment), else a
        plain wait of ``timeout_s`` (the in-memory transport, whose sites never join late)."""
        wait = getattr(self.inner, "wait_for_sites", None)
        if callable(wait):
            present = wait(count, timeout_s)
            return list(present)
        time.sleep(timeout_s)
        return self.inner.sites()


def observe(transport: Transport, listener: ReplyListener) -> ObservedTransport:
    """``transport`` with ``listener`` hearing of every training answer. An observed transport is not wrapped
    again: the transport returned observes the same inner one with one listener more, so each answer is still read
    once however many listen. Give the loop the transport returned."""
    if isinstance(transport, ObservedTransport):
        return ObservedTransport(transport.inner, *transport.listeners, listener)
    return ObservedTransport(transport, listener)
