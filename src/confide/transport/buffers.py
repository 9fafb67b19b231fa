"""The server's receive buffers: a few reused buffers, each lent to one upload at a time.

Uploads are received straight into one of ``count`` buffers (fresh 100 MB allocations cost page faults on every
update, so they are reused). A buffer is lent (:class:`Lease`) from the start of a transfer until the server has
folded its update. Waiting for one is bounded: a site that cannot have one in time is told to come back, rather
than waiting behind a site that holds its buffer forever. A buffer grown past ``keep_bytes`` (a transfer larger
than the model, allowed or refused) is let go when given back, so one large transfer does not keep its memory.

Uploads wait on the service's event loop (:meth:`BufferPool.acquire`, a coroutine); the server loop gives
buffers back from its own thread once it has folded their updates (:meth:`Lease.release`), which hands the buffer
to the first upload still waiting, on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque

from confide.transport import framing


class Lease:
    """One of the pool's receive buffers, held from the start of a transfer until its update is folded."""

    def __init__(self, pool: BufferPool, slot: int) -> None:
        self._pool = pool
        self._slot = slot
        self._released = False

    def buffer(self, size: int) -> memoryview:
        return self._pool.buffer(self._slot, size)

    def release(self) -> None:
        """Give the buffer back (from any thread; twice is once)."""
        if not self._released:
            self._released = True
            self._pool.give_back(self._slot)


class BufferPool:
    """``count`` reusable receive buffers, lent in the order they were asked for."""

    def __init__(self, count: int, *, keep_bytes: int | None = None) -> None:
        if count < 1:
            raise ValueError(f"a buffer pool needs at least one buffer, got count={count}")
        self.keep_bytes = keep_bytes  # a buffer larger than this is let go when given back (None: kept)
        self._buffers: list[memoryview] = [framing.new_buffer(0) for _ in range(count)]
        self._free: list[int] = list(range(count))
        self._waiting: deque[asyncio.Future[Lease]] = deque()  # first come, first served
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the waiters wait on
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self._buffers)

    def resize(self, count: int) -> None:
        """Lend up to ``count`` buffers at once from now on (before any is lent: the service is being set up)."""
        if count < 1:
            raise ValueError(f"a buffer pool needs at least one buffer, got count={count}")
        with self._lock:
            if len(self._free) != len(self._buffers):
                raise RuntimeError("the receive buffers cannot be resized while some are lent")
            self._buffers = [framing.new_buffer(0) for _ in range(count)]
            self._free = list(range(count))

    @property
    def in_use(self) -> int:
        """How many buffers are lent now."""
        with self._lock:
            return len(self._buffers) - len(self._free)

    @property
    def waiting(self) -> int:
        """How many uploads wait for a buffer now."""
        with self._lock:
            return sum(not f.done() for f in self._waiting)

    def held_bytes(self) -> int:
        """The memory the pool's buffers hold (lent or not)."""
        with self._lock:
            return sum(b.nbytes for b in self._buffers)

    async def acquire(self, timeout_s: float) -> Lease | None:
        """A buffer, once every earlier request has had one; ``None`` if none came within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._loop = loop
            if self._free and not self._waiting:
                return Lease(self, self._free.pop())
            granted: asyncio.Future[Lease] = loop.create_future()
            self._waiting.append(granted)
        try:
            return await asyncio.wait_for(asyncio.shield(granted), timeout_s)
        except TimeoutError:
            if granted.done():  # granted in the same turn of the loop as the timeout: take it
                return granted.result()
            self._abandon(granted)
            return None
        except BaseException:  # the call was cancelled while it waited
            self._abandon(granted)
            raise

    def _abandon(self, granted: asyncio.Future[Lease]) -> None:
        """A wait given up: out of the queue; a buffer granted to it meanwhile goes to the next in line."""
        with self._lock:
            if granted in self._waiting:
                self._waiting.remove(granted)
        if granted.done() and not granted.cancelled():
            granted.result().release()
        elif not granted.done():
            granted.cancel()

    def buffer(self, slot: int, size: int) -> memoryview:
        if self._buffers[slot].nbytes < size:
            self._buffers[slot] = framing.new_buffer(0)  # drop the old one first: never two of them at once
            self._buffers[slot] = framing.new_buffer(size)
        return self._buffers[slot][:size]

    def give_back(self, slot: int) -> None:
        with self._lock:
            if self.keep_bytes is not None and self._buffers[slot].nbytes > self.keep_bytes:
                self._buffers[slot] = framing.new_buffer(0)  # the next transfer allocates what it needs
            self._free.append(slot)
            loop = self._loop if self._waiting else None
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                loop.call_soon_threadsafe(self._grant)

    def _grant(self) -> None:
        """On the event loop: free buffers to the uploads waiting longest."""
        with self._lock:
            while self._free and self._waiting:
                waiter = self._waiting.popleft()
                if waiter.done():
                    continue  # gave up waiting
                lease = Lease(self, self._free.pop())
                waiter.set_result(lease)
