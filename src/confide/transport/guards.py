"""Guards on the server's streams, so that no site can stall the others.

- :class:`Watchdog`: a stream that moves no frame for ``idle_s`` is dropped (its call cancelled, which wakes the
  handler thread blocked on it: the thread, and whatever the stream held, a receive buffer or a sending slot, are
  freed). One thread watches every stream, and only while some stream is watched.
- :class:`Pace`: a whole transfer must keep up a minimum rate after a generous floor, so that it finishes within
  ``floor_s + size / min_rate``; checked at every frame by the handler itself, which can still answer the site.
- :class:`Slots`: how many streams of each kind a site may hold at once, and how many every site together may
  hold, so that transfers never take every worker thread and Join and Heartbeat always find one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class Stalled(Exception):
    """A transfer fell behind its pace (the reason says how); the handler refuses it."""


@dataclass(eq=False)
class Watched:
    """One stream under the watchdog. ``touch()`` whenever a frame moves; ``dropped`` says why it was cut."""

    label: str  # who and what, for the log: "site-1 (ipv4:..., certificate 1A2B) upload"
    cancel: Callable[[], None]
    last: float = field(default_factory=time.monotonic)
    dropped: str | None = None

    def touch(self) -> None:
        self.last = time.monotonic()

    def frames(self, stream: Iterator[bytes], pace: Pace | None = None) -> Iterator[bytes]:
        """``stream``'s frames, each one touching the watch; with ``pace``, refused once it falls behind."""
        for frame in stream:
            self.last = now = time.monotonic()
            if pace is not None:
                pace.check(len(frame), now)
            yield frame


class Watchdog:
    """Cancels every watched stream that moves no frame for ``idle_s`` seconds."""

    def __init__(self, idle_s: float) -> None:
        if not idle_s > 0:
            raise ValueError(f"idle_s must be a positive number of seconds, got {idle_s}")
        self.idle_s = idle_s
        self._watched: set[Watched] = set()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, label: str, cancel: Callable[[], None]) -> _Watching:
        """``with watchdog.watch(label, context.cancel) as watched: ...``: watched for the block's duration."""
        return _Watching(self, Watched(label=label, cancel=cancel))

    def _add(self, watched: Watched) -> None:
        with self._lock:
            self._watched.add(watched)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="confide-stream-watchdog", daemon=True)
                self._thread.start()

    def _remove(self, watched: Watched) -> None:
        with self._lock:
            self._watched.discard(watched)

    def _run(self) -> None:
        tick = min(1.0, self.idle_s / 4)
        while True:
            with self._lock:
                if not self._watched:
                    self._thread = None  # started again by the next watch
                    return
                now = time.monotonic()
                idle = [w for w in self._watched if w.dropped is None and now - w.last > self.idle_s]
                for watched in idle:
                    watched.dropped = f"no frame moved for {now - watched.last:.0f} s (idle limit {self.idle_s:g} s)"
            for watched in idle:
                log.warning("%s dropped: %s", watched.label, watched.dropped)
                try:
                    watched.cancel()
                except Exception as exc:  # a call that has ended already cannot be cancelled: nothing is held
                    log.debug("cancelling %s: %s", watched.label, exc)
            with self._lock:
                self._lock.wait(tick)


class _Watching:
    def __init__(self, watchdog: Watchdog, watched: Watched) -> None:
        self._watchdog = watchdog
        self._watched = watched

    def __enter__(self) -> Watched:
        self._watched.touch()
        self._watchdog._add(self._watched)
        return self._watched

    def __exit__(self, *exc: object) -> None:
        self._watchdog._remove(self._watched)


class Pace:
    """A transfer of ``size`` bytes must have moved ``min_rate * (elapsed - floor_s)`` bytes at every moment,
    so it finishes within ``floor_s + size / min_rate`` and a trickling site cannot hold a buffer for longer."""

    def __init__(self, size: int, *, floor_s: float, min_rate: float) -> None:
        self.size = size
        self.floor_s = floor_s
        self.min_rate = min_rate
        self.start = time.monotonic()
        self.moved = 0

    @property
    def deadline_s(self) -> float:
        return self.floor_s + self.size / self.min_rate

    def check(self, nbytes: int, now: float) -> None:
        self.moved += nbytes
        late = now - self.start - self.floor_s
        if late > 0 and self.moved < min(self.size, late * self.min_rate):
            raise Stalled(
                f"too slow: {self.moved} of {self.size} bytes in {now - self.start:.0f} s (a transfer of this "
                f"size must finish within {self.deadline_s:.0f} s: {self.floor_s:g} s, then at least "
                f"{self.min_rate / 1024:.0f} KiB/s)"
            )


class Busy(Exception):
    """A site, or every site together, already holds as many streams of a kind as it may."""


class Slots:
    """Streams held at once: at most ``per_site[kind]`` per site and kind, at most ``total`` of every guarded kind
    across all sites (the rest of the worker threads stay free for the calls that are not guarded)."""

    def __init__(self, per_site: Mapping[str, int], total: int) -> None:
        if total < 1 or any(limit < 1 for limit in per_site.values()):
            raise ValueError(f"stream limits must be at least 1, got per site {dict(per_site)}, total {total}")
        self.per_site = dict(per_site)
        self.total = total
        self._held: dict[tuple[str, str], int] = {}
        self._all = 0
        self._lock = threading.Lock()

    def take(self, site: str, kind: str) -> Slot:
        """One slot of ``kind`` for ``site``, or :class:`Busy` saying which limit is reached."""
        key = (site, kind)
        with self._lock:
            held = self._held.get(key, 0)
            if held >= self.per_site[kind]:
                raise Busy(f"this site already has {held} {kind} streams open (at most {self.per_site[kind]})")
            if self._all >= self.total:
                raise Busy(f"the server is busy: {self._all} transfers are open (at most {self.total}); try again")
            self._held[key] = held + 1
            self._all += 1
        return Slot(self, key)

    def held(self, site: str, kind: str) -> int:
        with self._lock:
            return self._held.get((site, kind), 0)

    def _give(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._all -= 1
            left = self._held[key] - 1
            if left:
                self._held[key] = left
            else:
                del self._held[key]


class Slot:
    def __init__(self, slots: Slots, key: tuple[str, str]) -> None:
        self._slots = slots
        self._key = key
        self._given = False

    def release(self) -> None:
        if not self._given:
            self._given = True
            self._slots._give(self._key)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
