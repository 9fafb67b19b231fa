"""In-memory transport: the simulator's and the tests' twin of the gRPC transport.

Messages still travel as bytes, so everything passes through :mod:`confide.serde` exactly as in a
real deployment. Sites run one after the other in this process (on a small machine, torch already
uses every core for one site).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Protocol

from confide.serde import Encoded
from confide.transport.base import Reply


class Endpoint(Protocol):
    """A site as the transport sees it: bytes in, bytes out."""

    def handle(self, payload: bytes | memoryview) -> bytes: ...


class InMemoryTransport:
    concurrent = False  # sites take turns

    def __init__(self, endpoints: Mapping[str, Endpoint]) -> None:
        self._endpoints = dict(endpoints)
        self._down: set[str] = set()
        self._heard: dict[str, float] = {}  # when each site last answered (time.monotonic)

    def sites(self) -> list[str]:
        return [name for name in self._endpoints if name not in self._down]

    def disconnect(self, site: str) -> None:
        """Simulate a site that went away (tests and failure drills)."""
        self._down.add(site)

    def reconnect(self, site: str) -> None:
        self._down.discard(site)

    def exchange(self, messages: Mapping[str, bytes | Encoded], deadline_s: float | None = None) -> Iterator[Reply]:
        """Each site's answer in turn. Sites run one after another here but at once in a deployment, so the round's
        deadline applies to each site's own time: a site that took longer is late, as it would be deployed."""
        joined: dict[int, bytes] = {}
        for site, message in messages.items():
            if isinstance(message, bytes):
                payload = message
            else:  # joined once per distinct message, not once per site (setdefault would join it every time)
                if id(message) not in joined:
                    joined[id(message)] = message.tobytes()
                payload = joined[id(message)]
            endpoint = self._endpoints.get(site)
            if endpoint is None or site in self._down:
                yield Reply(site=site, payload=None, error="site is not connected")
                continue
            t0 = time.perf_counter()
            try:
                answer = endpoint.handle(payload)
            except Exception as exc:  # a crashing site is a failed reply, never a crashed server
                yield Reply(site=site, payload=None, error=f"site crashed: {type(exc).__name__}: {exc}")
                continue
            seconds = time.perf_counter() - t0
            self._heard[site] = time.monotonic()
            if deadline_s is not None and seconds > deadline_s:
                yield Reply(site=site, payload=None, error=f"round deadline of {deadline_s:g} s passed")
                continue
            yield Reply(site=site, payload=answer, seconds=seconds)

    def last_heard(self) -> dict[str, float]:
        """Seconds since each site last answered (a simulated site sends no heartbeats: it is heard when it
        answers). Read-only, for the dashboard's thread."""
        now = time.monotonic()
        return {site: now - at for site, at in dict(self._heard).items()}

    def refused_callers(self) -> list[tuple[str, str, float]]:
        """None: no caller here presents a certificate, so none is refused."""
        return []

    def notify(self, site: str, message: str) -> None:
        endpoint = self._endpoints.get(site)
        notice = getattr(endpoint, "notice", None)
        if callable(notice):
            notice(message)

    def close(self) -> None:
        self._endpoints.clear()
