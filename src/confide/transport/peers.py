"""Who is calling: a site's name, its network address and its certificate's serial, for the server's trail.

Everything here that came from the peer (its address as gRPC reports it, any text of its certificate) is passed
through :func:`confide.sanitize.one_line` before it reaches a log line.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from confide.sanitize import one_line


@dataclass(frozen=True)
class Caller:
    """A site proven by its client certificate, and where its call came from."""

    name: str
    peer: str  # e.g. "ipv4:10.0.0.7:53412", as gRPC reports it, on one line
    serial: str  # the certificate's serial number in hex, as OpenSSL prints it

    def __str__(self) -> str:
        return f"{self.name} ({self.peer}, certificate {self.serial})"


def peer_text(peer: str) -> str:
    return one_line(peer, 100) or "unknown address"


@functools.lru_cache(maxsize=1024)
def cert_serial(cert_pem: bytes) -> str:
    """The serial number of a PEM certificate in upper-case hex (``"?"`` when it cannot be read)."""
    try:
        return f"{x509.load_pem_x509_certificate(cert_pem).serial_number:X}"
    except ValueError:
        return "?"


class Throttle:
    """Says whether to log one more line about ``key``: the first time, then at most once per ``every_s`` (with
    how many were left out since), so that a site repeating a refused call thousands of times cannot flood the
    log, while every distinct refusal still appears."""

    def __init__(self, every_s: float = 10.0, keys: int = 4096) -> None:
        self.every_s = every_s
        self.keys = keys
        self._last: dict[object, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def allow(self, key: object) -> int | None:
        """``None``: leave this one out; otherwise log it, and this many like it were left out before."""
        now = time.monotonic()
        with self._lock:
            last, skipped = self._last.get(key, (-float("inf"), 0))
            if now - last < self.every_s:
                self._last[key] = (last, skipped + 1)
                return None
            if len(self._last) >= self.keys:
                self._last.clear()
            self._last[key] = (now, 0)
            return skipped


class IdentityCache:
    """Each certificate's proven site name, checked once per ``ttl_s`` (a full check parses the certificate and
    verifies the CA's signature, about a millisecond, on every call of every site otherwise) and again at once
    when the revocation list or the roster changes (they are compared by identity: the kit's watched files give
    the same object while the file is unchanged). A certificate that fails its check is never cached."""

    def __init__(self, ttl_s: float = 10.0, entries: int = 4096) -> None:
        self.ttl_s = ttl_s
        self.entries = entries
        self._known: dict[bytes, tuple[str, float, object, object]] = {}
        self._lock = threading.Lock()

    def name(self, cert_pem: bytes, revoked: object, roster: object, check: Callable[[], str]) -> str:
        now = time.monotonic()
        with self._lock:
            known = self._known.get(cert_pem)
        if known is not None and now - known[1] < self.ttl_s and known[2] is revoked and known[3] is roster:
            return known[0]
        name = check()  # raises for a certificate without an identity: nothing is cached for it
        with self._lock:
            if len(self._known) >= self.entries:
                self._known.clear()
            self._known[cert_pem] = (name, now, revoked, roster)
        return name
