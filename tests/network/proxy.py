"""A fault-injecting TCP proxy for deployment tests and benches: latency, a bandwidth limit, connections reset at
random, and a partition that cuts every connection and refuses new ones until it heals.

Each site dials its own proxy, which forwards to the server; TLS passes through untouched (the proxy sees only
ciphertext). Faults can change while the job runs. The proxy runs an asyncio loop on a thread of its own.

    with FaultyProxy(("127.0.0.1", server_port), Faults(delay_s=0.1, rate=10e6)) as proxy:
        ... sites dial f"localhost:{proxy.port}" ...
        proxy.faults.cut = True    # partition this site
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

CHUNK = 64 * 1024


@dataclass
class Faults:
    """What the proxy does to the traffic; read afresh for every chunk, so a test may change it at any time."""

    delay_s: float = 0.0  # added one way, each direction
    rate: float | None = None  # bytes per second, each direction of each connection (None: unlimited)
    reset_every_s: float | None = None  # mean time between resets of a random open connection (None: never)
    cut: bool = False  # partitioned: open connections are cut, new ones closed at once
    seed: int = 0
    resets: int = field(default=0)  # connections reset so far (counted by the proxy)


class FaultyProxy:
    """Listens on ``host`` (a free port, :attr:`port`) and forwards to ``target`` through :attr:`faults`."""

    def __init__(self, target: tuple[str, int], faults: Faults | None = None, host: str = "127.0.0.1") -> None:
        self.target = target
        self.faults = faults or Faults()
        self.host = host
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._random = random.Random(self.faults.seed)
        self._thread = threading.Thread(target=self._run, name="faulty-proxy", daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = server.sockets[0].getsockname()[1]
        chaos = asyncio.ensure_future(self._chaos())
        self._ready.set()
        while not self._stopped.is_set():
            await asyncio.sleep(0.05)
        chaos.cancel()
        server.close()
        for a, b in list(self._links):
            a.transport.abort()
            b.transport.abort()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.faults.cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)
        finally:
            self._links.discard(link)
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward one direction, each chunk held back by the delay and paced by the rate, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    writer.transport.abort()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                rate = self.faults.rate
                for start in range(0, len(data), 16 * 1024 if rate else len(data)):
                    piece = data[start : start + (16 * 1024 if rate else len(data))]
                    writer.write(piece)
                    await writer.drain()
                    if rate:
                        await asyncio.sleep(len(piece) / rate)

        sender = asyncio.ensure_future(send())
        try:
            while True:
                if self.faults.cut:
                    break
                data = await reader.read(CHUNK)
                if not data or self.faults.cut:
                    break
                await queue.put((time.monotonic() + self.faults.delay_s, data))
        finally:
            queue.put_nowait((0.0, b""))
            try:
                await asyncio.wait_for(sender, timeout=max(5.0, 2 * self.faults.delay_s))
            except (TimeoutError, asyncio.CancelledError, ConnectionError):
                sender.cancel()

    async def _chaos(self) -> None:
        """Resets (a random open connection now and then) and the partition (every connection, while cut)."""
        while True:
            every = self.faults.reset_every_s
            await asyncio.sleep(self._random.expovariate(1 / every) if every else 0.05)
            links = list(self._links)
            if self.faults.cut:
                for a, b in links:
                    a.transport.abort()
                    b.transport.abort()
            elif every and links:
                a, b = self._random.choice(links)
                self.faults.resets += 1
                a.transport.abort()
                b.transport.abort()


@contextmanager
def proxies(
    target: tuple[str, int], names: list[str], faults: Faults, host: str = "127.0.0.1"
) -> Iterator[dict[str, FaultyProxy]]:
    """One proxy per site on ``host``, each with its own copy of ``faults`` (so that one site can be cut alone)."""
    opened: dict[str, FaultyProxy] = {}
    try:
        for i, name in enumerate(names):
            own = Faults(faults.delay_s, faults.rate, faults.reset_every_s, faults.cut, faults.seed + i)
            opened[name] = FaultyProxy(target, own, host).__enter__()
        yield opened
    finally:
        for proxy in opened.values():
            proxy.__exit__()
