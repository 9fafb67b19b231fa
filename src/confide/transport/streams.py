"""The server's transfers under guard: instructions streamed to a site, updates received from one.

:class:`StreamGuards` holds what keeps one site from stalling the others (see :mod:`confide.transport.guards`):
the watchdog, the per-site stream slots, the receive buffers and the sending slots. Every refusal says why, to the
site when it is still there to hear it and in the log, with the site, its address and its certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NoReturn

import grpc

from confide.errors import ConfideError, PayloadTooLarge
from confide.sanitize import one_line
from confide.transport import framing
from confide.transport.buffers import BufferPool, Lease
from confide.transport.guards import Busy, Pace, Slot, Slots, Stalled, Watchdog, Watched
from confide.transport.peers import Caller, Throttle
from confide.transport.service_config import ServiceConfig

log = logging.getLogger(__name__)


def answer(ok: bool, *, retry: bool = False, reason: str = "") -> bytes:
    """The server's reply to a push."""
    return json.dumps({"ok": True} if ok else {"ok": False, "retry": retry, "reason": reason}).encode()


def canceller() -> Callable[[], None]:
    """A function, safe to call from any thread, that cancels the calling handler's call (its task on the event
    loop): what the watchdog calls for a stream that stopped moving."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("canceller() must be called from a handler running as an asyncio task")

    def cancel() -> None:
        task.cancel()

    return lambda: _soon(loop, cancel)


async def _cut(watched: Watched, context: grpc.aio.ServicerContext[Any, Any], what: str) -> NoReturn:
    """A stream's task was cancelled: by the watchdog (the stream stopped moving; the call is ended here, with
    the reason) or by gRPC (the site went away; nothing is left to answer)."""
    task = asyncio.current_task()
    if watched.dropped is None or task is None:
        raise asyncio.CancelledError
    task.uncancel()  # cancelled by the watchdog: this handler ends the call itself
    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{what} dropped: {watched.dropped}")
    raise AssertionError("unreachable")


class _Permit:
    """One sending slot held, given back once (by the stream when it ends, or earlier by the watchdog)."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._semaphore.release()


def _soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Run ``callback`` on ``loop`` (from any thread), unless the loop has ended."""
    if not loop.is_closed():
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback)


class StreamGuards:
    """The guards of every stream of one service. Its coroutines run on the service's event loop."""

    def __init__(self, config: ServiceConfig, throttle: Throttle) -> None:
        self.config = config
        self.throttle = throttle
        self.buffers = BufferPool(config.max_inflight, keep_bytes=config.keep_bytes)
        self.sending = asyncio.Semaphore(config.max_sending)
        self.watchdog = Watchdog(config.idle_s)
        per_site = {"push": config.pushes_per_site, "pull": config.pulls_per_site}
        self.slots = Slots(per_site, total=config.max_transfers)

    def _pace(self, size: int) -> Pace:
        return Pace(size, floor_s=self.config.transfer_floor_s, min_rate=self.config.transfer_min_rate)

    async def slot(self, caller: Caller, kind: str, context: grpc.aio.ServicerContext[Any, Any]) -> Slot:
        """One of the streams ``caller`` may hold at once, or the call refused at once (RESOURCE_EXHAUSTED)."""
        try:
            return self.slots.take(caller.name, kind)
        except Busy as exc:
            skipped = self.throttle.allow((caller.name, kind))
            if skipped is not None:  # a site hammering the limit: a line every few seconds
                more = f" ({skipped} more like it since the last line)" if skipped else ""
                log.warning("site %s: %s refused: %s%s", caller, kind, exc, more)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        raise AssertionError("unreachable")

    async def send(
        self,
        caller: Caller,
        context: grpc.aio.ServicerContext[Any, Any],
        what: str,
        frames: Iterator[bytes],
        size: int,
    ) -> bool:
        """Stream ``frames`` (a transfer of ``size`` bytes) to ``caller``, a few streams at a time (each buffers a
        few MB in flight). A stream the site stops taking is dropped by the watchdog; one that falls behind its
        pace is ended here with DEADLINE_EXCEEDED. False when no sending slot came within queue_wait_s: the site
        is told to pull again."""
        try:
            await asyncio.wait_for(self.sending.acquire(), self.config.queue_wait_s)
        except TimeoutError:
            wait_s = self.config.queue_wait_s
            log.warning("site %s: no sending slot for its %s within %.0f s; told to pull again", caller, what, wait_s)
            await context.write(framing.control(wait=True))
            return False
        loop = asyncio.get_running_loop()
        permit = _Permit(self.sending)
        # A write the site stops taking cannot be cancelled (gRPC would never end the call): the watchdog lets go
        # of its sending slot instead, and the call is ended here should the write ever complete; until the site
        # gives up, it holds one of its own pull slots and a flow-control window's worth of memory.
        try:
            pace = self._pace(size)
            with self.watchdog.watch(f"site {caller}: {what}", lambda: _soon(loop, permit.release)) as watched:
                try:
                    for frame in frames:
                        await context.write(frame)  # returns once gRPC has taken the frame: the site takes them
                        if watched.dropped is not None:
                            raise Stalled(watched.dropped)
                        watched.last = now = time.monotonic()
                        pace.check(len(frame), now)
                except Stalled as exc:
                    if watched.dropped is None:
                        log.warning("site %s: %s dropped: %s", caller, what, exc)
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{what} dropped: {exc}")
            return True
        finally:
            permit.release()

    async def header(
        self, caller: Caller, frames: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[dict[str, Any], bytes] | bytes:
        """An upload's header and its first frame (a single frame holds the whole upload), its size within the
        limit (checked before any buffer is lent or allocated); or the refusal to answer."""
        with self.watchdog.watch(f"site {caller}: upload", canceller()) as watched:
            try:
                first = await anext(frames)
                header = framing.parse_header(first)
                framing.announced_size(header, self.config.max_bytes)
                return header, first
            except StopAsyncIteration:
                return answer(False, retry=True, reason="transfer refused: empty stream")
            except ConfideError as exc:
                log.warning("site %s: transfer refused: %s", caller, one_line(exc))
                return answer(False, retry=not isinstance(exc, PayloadTooLarge), reason=f"transfer refused: {exc}")
            except asyncio.CancelledError:
                await _cut(watched, context, "upload")
        raise AssertionError("unreachable")

    async def receive(
        self,
        caller: Caller,
        header: dict[str, Any],
        first: bytes,
        frames: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> tuple[memoryview, Lease] | bytes:
        """An upload's payload, received into a lent buffer (held until the update is folded); or the refusal
        to answer, every buffer given back."""
        # Only max_inflight updates are received and held at once; the other sites' streams wait here, held
        # back by HTTP/2 flow control, so the server never holds one update per site; for queue_wait_s at most.
        lease = await self.buffers.acquire(self.config.queue_wait_s)
        if lease is None:
            wait_s = self.config.queue_wait_s
            log.warning("site %s: no receive buffer came free within %.0f s; told to send again", caller, wait_s)
            return answer(False, retry=True, reason="server busy: no receive buffer came free in time; send again")
        kept = False
        try:
            pace = self._pace(int(header["size"]))
            with self.watchdog.watch(f"site {caller}: upload", canceller()) as watched:
                receiver = framing.Receiver(header, max_bytes=self.config.max_bytes, allocate=lease.buffer)
                receiver.first(first)
                try:
                    async for frame in frames:
                        watched.last = now = time.monotonic()
                        pace.check(len(frame), now)
                        receiver.feed(frame)
                except asyncio.CancelledError:
                    await _cut(watched, context, "upload")
                transfer = receiver.finish()
            kept = True
            return transfer.payload, lease
        except Stalled as exc:
            log.warning("site %s: upload dropped: %s", caller, exc)
            return answer(False, retry=True, reason=f"upload dropped: {exc}")
        except ConfideError as exc:
            log.warning("site %s: transfer refused: %s", caller, one_line(exc))
            return answer(False, retry=True, reason=str(exc))
        finally:
            if not kept:
                lease.release()  # the buffer goes to the next site's upload
