"""The server's transfers under guard: instructions streamed to a site, updates received from one.

:class:`StreamGuards` holds what keeps one site from stalling the others (see :mod:`confide.transport.guards`):
the watchdog, the per-site stream slots, the receive buffers and the sending slots. Every refusal says why, to the
site when it is still there to hear it and in the log, with the site, its address and its certificate.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

import grpc

from confide.errors import ConfideError, PayloadTooLarge
from confide.sanitize import one_line
from confide.transport import framing
from confide.transport.buffers import BufferPool, Lease
from confide.transport.guards import Busy, Pace, Slot, Slots, Stalled, Watchdog
from confide.transport.peers import Caller, Throttle
from confide.transport.service_config import ServiceConfig

log = logging.getLogger(__name__)


def answer(ok: bool, *, retry: bool = False, reason: str = "") -> bytes:
    """The server's reply to a push."""
    return json.dumps({"ok": True} if ok else {"ok": False, "retry": retry, "reason": reason}).encode()


class StreamGuards:
    def __init__(self, config: ServiceConfig, throttle: Throttle) -> None:
        self.config = config
        self.throttle = throttle
        self.buffers = BufferPool(config.max_inflight, keep_bytes=config.keep_bytes)
        self.sending = threading.BoundedSemaphore(config.max_sending)
        self.watchdog = Watchdog(config.idle_s)
        per_site = {"push": config.pushes_per_site, "pull": config.pulls_per_site}
        self.slots = Slots(per_site, total=config.workers - config.call_workers)

    def _pace(self, size: int) -> Pace:
        return Pace(size, floor_s=self.config.transfer_floor_s, min_rate=self.config.transfer_min_rate)

    def slot(self, caller: Caller, kind: str, context: grpc.ServicerContext) -> Slot:
        """One of the streams ``caller`` may hold at once, or the call refused at once (RESOURCE_EXHAUSTED)."""
        try:
            return self.slots.take(caller.name, kind)
        except Busy as exc:
            skipped = self.throttle.allow((caller.name, kind))
            if skipped is not None:  # a site hammering the limit: a line every few seconds
                more = f" ({skipped} more like it since the last line)" if skipped else ""
                log.warning("site %s: %s refused: %s%s", caller, kind, exc, more)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        raise AssertionError("unreachable")

    def send(
        self, caller: Caller, context: grpc.ServicerContext, what: str, frames: Iterator[bytes], size: int
    ) -> Generator[bytes, None, bool]:
        """Stream ``frames`` (a transfer of ``size`` bytes) to ``caller``, a few streams at a time (each buffers a
        few MB in flight). A stream the site stops taking is dropped by the watchdog; one that falls behind its
        pace is ended here with DEADLINE_EXCEEDED. False when no sending slot came within queue_wait_s: the site
        is told to pull again."""
        if not self.sending.acquire(timeout=self.config.queue_wait_s):
            wait_s = self.config.queue_wait_s
            log.warning("site %s: no sending slot for its %s within %.0f s; told to pull again", caller, what, wait_s)
            yield framing.control(wait=True)
            return False
        try:
            pace = self._pace(size)
            with self.watchdog.watch(f"site {caller}: {what}", context.cancel) as watched:
                for frame in frames:
                    yield frame  # resumes once gRPC has handed the frame on: the site is taking them
                    watched.last = now = time.monotonic()
                    try:
                        pace.check(len(frame), now)
                    except Stalled as exc:
                        log.warning("site %s: %s dropped: %s", caller, what, exc)
                        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{what} dropped: {exc}")
            return True
        finally:
            self.sending.release()

    def header(self, caller: Caller, frames: Iterator[bytes], context: grpc.ServicerContext) -> dict[str, Any] | bytes:
        """An upload's header frame, its size within the limit (checked before any buffer is lent or allocated);
        or the refusal to answer."""
        with self.watchdog.watch(f"site {caller}: upload", context.cancel) as watched:
            try:
                header = framing.parse_header(next(frames))
                framing.announced_size(header, self.config.max_bytes)
                return header
            except StopIteration:
                return answer(False, retry=True, reason="transfer refused: empty stream")
            except grpc.RpcError:  # cancelled: by the watchdog (logged there), or by the site
                return answer(False, retry=True, reason=f"upload dropped: {watched.dropped or 'cancelled'}")
            except ConfideError as exc:
                log.warning("site %s: transfer refused: %s", caller, one_line(exc))
                return answer(False, retry=not isinstance(exc, PayloadTooLarge), reason=f"transfer refused: {exc}")

    def receive(
        self, caller: Caller, header: dict[str, Any], frames: Iterator[bytes], context: grpc.ServicerContext
    ) -> tuple[memoryview, Lease] | bytes:
        """An upload's payload, received into a lent buffer (held until the update is folded); or the refusal
        to answer, every buffer given back."""
        # Only max_inflight updates are received and held at once; the other sites' streams wait here, held
        # back by HTTP/2 flow control, so the server never holds one update per site; for queue_wait_s at most.
        lease = self.buffers.acquire(self.config.queue_wait_s)
        if lease is None:
            wait_s = self.config.queue_wait_s
            log.warning("site %s: no receive buffer came free within %.0f s; told to send again", caller, wait_s)
            return answer(False, retry=True, reason="server busy: no receive buffer came free in time; send again")
        pace = self._pace(int(header["size"]))
        with self.watchdog.watch(f"site {caller}: upload", context.cancel) as watched:
            try:
                transfer = framing.receive_after(
                    header, watched.frames(frames, pace), max_bytes=self.config.max_bytes, allocate=lease.buffer
                )
                return transfer.payload, lease
            except Stalled as exc:
                lease.release()
                log.warning("site %s: upload dropped: %s", caller, exc)
                return answer(False, retry=True, reason=f"upload dropped: {exc}")
            except (ConfideError, grpc.RpcError) as exc:
                lease.release()  # the buffer goes to the next site's upload
                if watched.dropped is None and isinstance(exc, ConfideError):
                    log.warning("site %s: transfer refused: %s", caller, one_line(exc))
                    return answer(False, retry=True, reason=str(exc))
                why = watched.dropped or "cancelled by the site"
                log.info("site %s: upload ended unfinished: %s", caller, why)
                return answer(False, retry=True, reason=f"upload dropped: {why}")
