"""The transport interface: deliver each site its instruction and hand back replies as they arrive."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from confide.serde import Encoded


@dataclass(frozen=True)
class Reply:
    """One site's reply: its encoded answer, or why none came."""

    site: str
    payload: bytes | memoryview | None
    error: str | None = None
    seconds: float = 0.0


class Transport(Protocol):
    """Server side of a federation's transport. Sites dial out; the server only answers."""

    concurrent: bool
    """True when the sites of one exchange work at the same time (a deployment), False when they take turns (the
    in-memory simulator): the round's coordination time is its time less the slowest site's work, or less the sum."""

    def sites(self) -> list[str]:
        """Names of the sites connected now."""
        ...

    def exchange(self, messages: Mapping[str, bytes | Encoded], deadline_s: float | None = None) -> Iterator[Reply]:
        """Send each named site its message and yield replies in the order they arrive.

        A site that fails, disconnects or misses the deadline yields a reply with ``error`` set. A reply's
        payload is valid only until the next reply is requested: its buffer then takes the next update (so
        the server holds a fixed number of updates whatever the number of sites). Copy what you keep.
        """
        ...

    def notify(self, site: str, message: str) -> None:
        """Tell a site something it should know, such as why its update was rejected."""
        ...

    def close(self) -> None: ...
