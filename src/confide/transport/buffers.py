"""The server's receive buffers: a few reused buffers, each lent to one upload at a time.

Uploads are received straight into one of ``count`` buffers (fresh 100 MB allocations cost page faults on every
update, so they are reused). A buffer is lent (:class:`Lease`) from the start of a transfer until the server has
folded its update. Waiting for one is bounded: a site that cannot have one in time is told to come back, rather
than waiting behind a site that holds its buffer forever. A buffer grown past ``keep_bytes`` (a transfer larger
than the model, allowed or refused) is let go when given back, so one large transfer does not keep its memory.
"""

from __future__ import annotations

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
        self._waiting: deque[object] = deque()  # tickets, first come first served
        self._cond = threading.Condition()

    @property
    def in_use(self) -> int:
        """How many buffers are lent now."""
        with self._cond:
            return len(self._buffers) - len(self._free)

    def held_bytes(self) -> int:
        """The memory the pool's buffers hold (lent or not)."""
        return sum(b.nbytes for b in self._buffers)

    def acquire(self, timeout_s: float) -> Lease | None:
        """A buffer, once every earlier request has had one; ``None`` if none came within ``timeout_s``."""
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
            try:
                granted = self._cond.wait_for(lambda: bool(self._free) and self._waiting[0] is ticket, timeout_s)
                if not granted:
                    return None
                return Lease(self, self._free.pop())
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()  # the next in line may be served now

    def buffer(self, slot: int, size: int) -> memoryview:
        if self._buffers[slot].nbytes < size:
            self._buffers[slot] = framing.new_buffer(0)  # drop the old one first: never two of them at once
            self._buffers[slot] = framing.new_buffer(size)
        return self._buffers[slot][:size]

    def give_back(self, slot: int) -> None:
        with self._cond:
            if self.keep_bytes is not None and self._buffers[slot].nbytes > self.keep_bytes:
                self._buffers[slot] = framing.new_buffer(0)  # the next transfer allocates what it needs
            self._free.append(slot)
            self._cond.notify_all()
