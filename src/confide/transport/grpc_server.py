"""The server side of a real deployment: gRPC with mutual TLS; sites dial out, the server only answers.

No protobuf: the service passes raw bytes (Confide's own serde payloads, framed by
:mod:`confide.transport.framing`). Four methods under ``/confide.v1.Federation/``:

- ``Join``: a site announces itself and receives the job it is to run;
- ``Pull``: long poll for the site's next instruction (streamed in chunks), or "wait", or "done";
- ``Push``: the site streams its answer to an instruction; the server acknowledges or says why not;
- ``Heartbeat``: liveness, separate from task traffic, sent while a site trains.

A site's identity is the common name of its verified client certificate, never a name in a message.

The service runs on grpc.aio: every call is a task on one event loop, in a thread of its own ("confide-grpc"), so a
site's long poll or a stalled stream costs no thread and the server holds hundreds of sites on one core. The server
loop (another thread) sees it through the Transport interface: it posts instructions and draws replies; every
crossing between the two goes through a lock and ``call_soon_threadsafe``.

No site can stall the others (:mod:`confide.transport.guards`): a stream that moves no frame for ``idle_s`` is
dropped, a transfer must keep a minimum pace, a site holds at most a few pushes and pulls at once, and all sites
together at most ``max_transfers``. No handler reads its request before it has checked the caller (Join,
Heartbeat and Pull never read theirs: the body is empty). The trail: joins and rejoins, and every refused call,
are logged with the peer's address and the serial of its certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

import grpc

from confide.errors import ConfideError, ConfigError
from confide.provision import IdentityError, site_identity
from confide.sanitize import one_line
from confide.serde import Encoded
from confide.transport import framing
from confide.transport.base import Reply
from confide.transport.buffers import Lease
from confide.transport.peers import Caller, IdentityCache, Throttle, cert_serial, peer_text
from confide.transport.service_config import HEADER_ALLOWANCE, ServiceConfig
from confide.transport.streams import StreamGuards, answer

__all__ = ["HEADER_ALLOWANCE", "FederationService", "ServiceConfig", "read_kit_file"]

log = logging.getLogger(__name__)

SERVICE = "confide.v1.Federation"
REFUSALS_KEPT = 20  # the last refused connections the dashboard can show
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", framing.CHUNK_BYTES + 4096),
    ("grpc.max_send_message_length", framing.CHUNK_BYTES + 4096),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]

# The server's receive windows stay small: a site whose update waits its turn (max_inflight) holds at most a
# window of it in the server's memory, instead of the megabytes that bandwidth probing would grant each stream.
SERVER_OPTIONS = [
    *GRPC_OPTIONS,
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 512 << 10),
    ("grpc.so_reuseport", 0),  # a second server on a taken port fails instead of splitting the sites with the first
]


Context: TypeAlias = grpc.aio.ServicerContext[bytes, bytes]


@dataclass
class _Site:
    name: str
    last_seen: float
    wake: asyncio.Event  # wakes this site's long poll only (set on the event loop)
    task: tuple[str, bytes | Encoded] | None = None
    notices: list[str] = field(default_factory=list)


class FederationService:
    """Sites' mailboxes and replies; the server loop sees it through the Transport interface."""

    concurrent = True  # every site of an exchange trains at once

    def __init__(self, ca_pem: bytes, config: ServiceConfig) -> None:
        self.ca_pem = ca_pem
        self.config = config
        self._sites: dict[str, _Site] = {}
        self._mutex = threading.RLock()
        self._lock = threading.Condition(self._mutex)  # wakes wait_for_sites when a site joins
        self._replies: queue.Queue[tuple[str, str, memoryview, Lease]] = queue.Queue()
        self._throttle = Throttle()
        self._identities = IdentityCache()
        self._guards = StreamGuards(config, self._throttle)
        self._expected: dict[str, str] = {}
        self._done = False
        self._failed: str | None = None
        self._final: bytes | Encoded | None = None
        self._told_done: set[str] = set()
        self._left: set[str] = set()  # sites that declined the job: not connected until they join again
        self._loop: asyncio.AbstractEventLoop | None = None  # the event loop the handlers run on (start_server)
        self._refusals: deque[tuple[float, str, str]] = deque(maxlen=REFUSALS_KEPT)  # when, who, why

    def _wake(self, states: Iterable[_Site]) -> None:
        """Wake these sites' long polls (from any thread; the caller holds the lock)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        events = [state.wake for state in states]
        if events:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: no poll is left to wake
                loop.call_soon_threadsafe(_set_all, events)

    def limit_transfers(self, model_bytes: int) -> int:
        """Size the transfer limit from the model: twice ``model_bytes`` (the encoded model's size) plus
        :data:`HEADER_ALLOWANCE`; a larger transfer is refused before anything is allocated for it, and a receive
        buffer grown past the model's size plus the allowance is let go once used. Returns the limit."""
        if isinstance(model_bytes, bool) or not isinstance(model_bytes, int) or model_bytes <= 0:
            raise ConfigError(f"model_bytes must be the encoded model's size in bytes (> 0), got {model_bytes!r}")
        self.config.max_bytes = 2 * model_bytes + HEADER_ALLOWANCE
        self.config.keep_bytes = self._guards.buffers.keep_bytes = model_bytes + HEADER_ALLOWANCE
        self.config.max_inflight = max(1, min(64, self.config.receive_budget // (model_bytes + HEADER_ALLOWANCE)))
        self._guards.buffers.resize(self.config.max_inflight)
        log.info(
            "transfers limited to %d bytes (a model of %d bytes); %d update(s) received at once",
            self.config.max_bytes,
            model_bytes,
            self.config.max_inflight,
        )
        return self.config.max_bytes

    # -- Transport -----------------------------------------------------------------------------
    def sites(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return sorted(
                s.name
                for s in self._sites.values()
                if now - s.last_seen <= self.config.site_timeout_s and s.name not in self._left
            )

    def last_heard(self) -> dict[str, float]:
        """Seconds since each site that ever joined was last heard from (any call); read-only, for the dashboard."""
        now = time.monotonic()
        with self._lock:
            return {s.name: now - s.last_seen for s in self._sites.values()}

    def refused_callers(self) -> list[tuple[str, str, float]]:
        """The last few refused connections, oldest first: who (address, certificate), why, seconds ago."""
        now = time.monotonic()
        return [(who, why, now - at) for at, who, why in self._refusals.copy()]

    def wait_for_sites(
        self, count: int, timeout_s: float, on_wait: Callable[[list[str]], None] | None = None
    ) -> list[str]:
        """Block until ``count`` sites are connected or ``timeout_s`` passes; return who is there."""
        end = time.monotonic() + timeout_s
        while True:
            present = self.sites()
            if len(present) >= count or time.monotonic() >= end:
                return present
            if on_wait is not None:
                on_wait(present)
            with self._lock:
                self._lock.wait(timeout=1.0)

    def wait_for_farewells(self, timeout_s: float) -> list[str]:
        """After :meth:`close`: block until every live site has been told "done" (and received the final model),
        or ``timeout_s`` passes; return the live sites not told. A site still busy when the job ended (finishing
        a late step, slowed by its neighbours) pulls a little later; the server must still be there to answer."""
        end = time.monotonic() + timeout_s
        # a site slowed by its neighbours may miss a heartbeat or two: anyone heard from in the last 30 s counts
        window = max(self.config.site_timeout_s, 30.0)
        while True:
            with self._lock:
                now = time.monotonic()
                recent = [
                    s.name for s in self._sites.values() if now - s.last_seen <= window and s.name not in self._left
                ]
                waiting = [name for name in recent if name not in self._told_done]
                if not waiting or time.monotonic() >= end:
                    return waiting
                self._lock.wait(timeout=0.5)

    def exchange(self, messages: Mapping[str, bytes | Encoded], deadline_s: float | None = None) -> Iterator[Reply]:
        """Replies in the order they arrive; a reply's payload is valid until the next reply is requested."""
        for message in {id(m): m for m in messages.values()}.values():
            if isinstance(message, Encoded):
                message.digest()  # once per distinct message, not once per site that pulls it
        batch = uuid.uuid4().hex[:12]
        pending: dict[str, str] = {}
        sent_at: dict[str, float] = {}
        connected = set(self.sites())
        with self._lock:
            for site, message in messages.items():
                if site not in connected:
                    continue
                task_id = f"{batch}-{site}"
                self._sites[site].task = (task_id, message)
                self._expected[task_id] = site
                pending[task_id] = site
                sent_at[task_id] = time.monotonic()
            self._wake(self._sites[site] for site in pending.values())
        for site in messages:
            if site not in connected:
                yield Reply(site=site, payload=None, error="site is not connected")
        end = None if deadline_s is None else time.monotonic() + deadline_s
        try:
            while pending:
                wait = 1.0 if end is None else max(0.0, min(1.0, end - time.monotonic()))
                try:
                    task_id, site, payload, lease = self._replies.get(timeout=wait)
                except queue.Empty:
                    yield from self._expire(pending, end)
                    continue
                try:
                    if pending.pop(task_id, None) is not None:
                        yield Reply(site=site, payload=payload, seconds=time.monotonic() - sent_at[task_id])
                finally:
                    del payload
                    lease.release()  # the consumer has folded it: its buffer takes the next update
        finally:
            with self._lock:
                for task_id, site in pending.items():
                    self._close_task(task_id, site)

    def _expire(self, pending: dict[str, str], end: float | None) -> Iterator[Reply]:
        now = time.monotonic()
        for task_id, site in list(pending.items()):
            with self._lock:
                seen = self._sites[site].last_seen
            if end is not None and now >= end:
                reason = "round deadline passed before its answer arrived"
            elif now - seen > self.config.site_timeout_s:
                reason = f"site stopped answering (no heartbeat for {now - seen:.0f} s)"
            else:
                continue
            del pending[task_id]
            with self._lock:
                self._close_task(task_id, site)
            yield Reply(site=site, payload=None, error=reason)

    def _close_task(self, task_id: str, site: str) -> None:
        self._expected.pop(task_id, None)
        state = self._sites.get(site)
        if state is not None and state.task is not None and state.task[0] == task_id:
            state.task = None

    def notify(self, site: str, message: str) -> None:
        with self._lock:
            state = self._sites.get(site)
            if state is not None:
                state.notices.append(message)
                self._wake([state])

    def close(self, final: bytes | Encoded | None = None, *, failed: str | None = None) -> None:
        """The job is over: every site's next pull answers "done", with the final model (``final``: encoded
        arrays) when one is given, so that each site can keep it and adapt it to its own patients. ``failed``: the
        job ended in failure, and why; sites hear it with "done" (and no model) and exit non-zero."""
        with self._lock:
            self._done = True
            if final is not None:
                self._final = final
            if failed is not None and self._failed is None:
                self._failed = one_line(failed, 500)
            self._wake(self._sites.values())

    def _farewell(self, name: str) -> None:
        with self._lock:
            self._told_done.add(name)
            self._lock.notify_all()

    # -- gRPC handlers (coroutines on the service's event loop) ------------------------------------
    async def _identify(self, context: Context) -> Caller:
        certs = context.auth_context().get("x509_pem_cert") or []
        peer = peer_text(context.peer())
        if not certs:
            self._refused(peer, "none", "no client certificate")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        serial = cert_serial(certs[0])
        revoked, roster = self.config.revoked(), self.config.roster()
        try:
            name = self._identities.name(
                certs[0], revoked, roster, lambda: site_identity(certs[0], self.ca_pem, revoked=revoked, roster=roster)
            )
        except IdentityError as exc:
            self._refused(peer, serial, one_line(exc))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return Caller(name=name, peer=peer, serial=serial)

    def _refused(self, peer: str, serial: str, reason: str) -> None:
        self._refusals.append((time.monotonic(), f"{peer} (certificate {serial})", reason))
        skipped = self._throttle.allow((serial, reason))
        if skipped is not None:  # the same certificate refused again and again: a line every few seconds
            more = f" ({skipped} more like it since the last line)" if skipped else ""
            log.warning("refused a connection from %s (certificate %s): %s%s", peer, serial, reason, more)

    def _seen(self, caller: Caller, *, join: bool = False) -> _Site:
        with self._lock:
            now = time.monotonic()
            state = self._sites.get(caller.name)
            if state is None:
                state = self._sites[caller.name] = _Site(name=caller.name, last_seen=now, wake=asyncio.Event())
                log.info("site %s joined from %s (certificate %s)", caller.name, caller.peer, caller.serial)
                self._lock.notify_all()
            elif join or now - state.last_seen > self.config.site_timeout_s:
                why = "joined again" if join else f"back after {now - state.last_seen:.0f} s of silence"
                log.info("site %s rejoined from %s (certificate %s): %s", caller.name, caller.peer, caller.serial, why)
                self._lock.notify_all()
            state.last_seen = now
            if join:
                self._left.discard(caller.name)
            return state

    # Join, Heartbeat and Pull never read their request (an empty body).
    async def join(self, request_iterator: AsyncIterator[bytes], context: Context) -> bytes:
        caller = await self._identify(context)
        self._seen(caller, join=True)
        return json.dumps(
            {"site": caller.name, "job": self.config.job, "heartbeat_s": self.config.heartbeat_s}
        ).encode()

    async def heartbeat(self, request_iterator: AsyncIterator[bytes], context: Context) -> bytes:
        """Liveness; once the job is over the reply says so, for a site still training to learn it without
        waiting for its next pull (and to stop retrying should the server then be gone)."""
        self._seen(await self._identify(context))
        with self._lock:
            if not self._done:
                return b"{}"
            return json.dumps({"done": True, **({"failed": self._failed} if self._failed else {})}).encode()

    async def pull(self, request_iterator: AsyncIterator[bytes], context: Context) -> None:
        caller = await self._identify(context)
        state = self._seen(caller)
        with await self._guards.slot(caller, "pull", context):
            end = time.monotonic() + self.config.poll_s
            while True:
                with self._lock:
                    if state.task is not None or state.notices or self._done:
                        break
                    state.wake.clear()  # a wake posted from now on is set after this, on this loop
                left = end - time.monotonic()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(state.wake.wait(), left)
                except TimeoutError:
                    break
            with self._lock:
                task, done, failed = state.task, self._done, self._failed
                notice = state.notices.pop(0) if state.notices else None
            state.last_seen = time.monotonic()
            if notice is not None:
                await context.write(framing.control(notice=notice))
            elif task is not None:
                await self._send(caller, context, "instruction", task[1], task=task[0])
            elif done and failed is not None:
                await context.write(framing.control(done=True, failed=failed))
                self._farewell(caller.name)
            elif done and self._final is not None:
                if await self._send(caller, context, "final model", self._final, done=True):
                    self._farewell(caller.name)
            elif done:
                await context.write(framing.control(done=True))
                self._farewell(caller.name)
            else:
                await context.write(framing.control(wait=True))

    async def _send(
        self, caller: Caller, context: Context, what: str, payload: bytes | Encoded, **header: object
    ) -> bool:
        size = payload.size if isinstance(payload, Encoded) else len(payload)
        return await self._guards.send(caller, context, what, framing.message(payload, **header), size)

    async def push(self, request_iterator: AsyncIterator[bytes], context: Context) -> bytes:
        caller = await self._identify(context)
        self._seen(caller)
        with await self._guards.slot(caller, "push", context):
            frames = aiter(request_iterator)
            opened = await self._guards.header(caller, frames, context)
            if isinstance(opened, bytes):
                return opened  # refused
            header, first = opened
            task_id = one_line(header.get("task", ""), 100)
            refusal = self._check_task(caller, task_id)
            if refusal is not None:
                return refusal
            received = await self._guards.receive(caller, header, first, frames, context)
            if isinstance(received, bytes):
                return received  # refused
            payload, lease = received
            refusal = self._check_task(caller, task_id, close=True)
            if refusal is not None:
                lease.release()
                return refusal
            self._replies.put((task_id, caller.name, payload, lease))
            if header.get("leaving") is True:  # the site declined the job: its last word, it is gone
                with self._lock:
                    self._left.add(caller.name)
                log.info(
                    "site %s declined the job and left; not counted as connected until it joins again", caller.name
                )
            return answer(True)

    def _check_task(self, caller: Caller, task_id: str, *, close: bool = False) -> bytes | None:
        """Why a result for ``task_id`` from ``caller`` is not wanted (``None``: it is, and is closed if asked)."""
        with self._lock:
            expected = self._expected.get(task_id)
            if expected is None and self._done:
                return json.dumps({"ok": False, "retry": False, "done": True, "reason": "the job is over"}).encode()
            if expected is None:
                log.warning("site %s: result for %s arrived after its round closed; discarded", caller, task_id)
                return answer(False, retry=False, reason="round already closed")
            if expected != caller.name:
                log.warning("site %s pushed a result for a task of site %s; refused", caller, expected)
                return answer(False, retry=False, reason="not your task")
            if close:
                self._close_task(task_id, caller.name)
        return None


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()


def read_kit_file(kit: Path, name: str) -> bytes:
    path = kit / name
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfideError(f"kit file {path} cannot be read: {exc.strerror or exc}") from None
