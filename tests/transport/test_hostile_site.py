"""One site with a valid certificate and a hand-written client must not stall, starve or bloat the server.

Each test reproduces an attack of the issue filed after a real one, against a FederationService over real mutual
TLS on 127.0.0.1, with honest sites running the real SiteClient beside the hostile one.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from confide.transport import framing
from confide.transport.grpc_server import FederationService
from tests.transport.hostile import LONG, SITES, Federation, provision_kits, serve, transfer, wait_until


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return provision_kits(tmp_path_factory.mktemp("kits"))


def _round(
    service: FederationService, messages: dict[str, bytes], keep: Callable[[memoryview], object] = bytes
) -> tuple[threading.Thread, dict[str, object]]:
    """One exchange in a thread; each reply lands in the dict as it arrives (``keep`` of its payload: a copy by
    default; or its error)."""
    replies: dict[str, object] = {}

    def run() -> None:
        for reply in service.exchange(messages, deadline_s=LONG):
            replies[reply.site] = keep(reply.payload) if reply.payload is not None else reply.error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, replies


def _answering(name: str, after: threading.Event | None = None) -> Callable[[memoryview], bytes]:
    def answer(instruction: memoryview) -> bytes:
        if after is not None:
            after.wait(LONG)
        return f"answer of {name}".encode()

    return answer


def _finish(fed: Federation) -> None:
    """The job ends: honest sites hear "done" and leave; then the server stops."""
    fed.service.close()
    for thread in fed.threads:
        thread.join(LONG)
    fed.stop()


def _logged(caplog: pytest.LogCaptureFixture, *parts: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if all(p in r.getMessage() for p in parts)]


def test_an_upload_stalled_by_one_certificate_is_dropped_and_the_others_uploads_proceed(
    kits: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the stalled upload held the one receive buffer for ever (the wait for it had no timeout, a stream
    no deadline), so every other site's upload waited behind it until the round failed."""
    caplog.set_level(logging.INFO)
    fed = serve(kits, heartbeat_s=0.2, idle_s=3.0)
    go = threading.Event()
    for name in ("site-1", "site-2"):
        fed.honest(name, _answering(name, after=go))
    hostile = fed.hostile("site-3")
    try:
        hostile.join(b"{}", timeout=LONG)
        assert len(fed.service.wait_for_sites(3, LONG)) == 3
        _, replies = _round(fed.service, dict.fromkeys(SITES, b"train"))
        header, ten_bytes, _trailer = transfer(hostile.task_id(), 1000, send=10)
        stalled = hostile.stalled_push([header, ten_bytes])  # 10 of 1,000 bytes, then silence
        assert wait_until(lambda: fed.service._guards.buffers.in_use == 1 or stalled.done())

        go.set()  # the honest sites answer now, while the stalled upload holds the buffer

        assert wait_until(lambda: {"site-1", "site-2"} <= replies.keys())
        assert replies["site-1"] == b"answer of site-1" and replies["site-2"] == b"answer of site-2"
        assert wait_until(stalled.done)
        assert isinstance(stalled.exception(), grpc.RpcError)  # the stalled call was cut
        assert _logged(caplog, "site site-3 (", "certificate", "upload dropped: no frame moved")
        assert wait_until(lambda: fed.service._guards.buffers.in_use == 0)  # no buffer left behind
    finally:
        hostile.close()
        _finish(fed)


def test_a_trickling_upload_is_refused_once_it_falls_behind_its_pace(
    kits: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a site sending one byte at a time held the receive buffer for as long as it liked."""
    fed = serve(kits, heartbeat_s=0.2, idle_s=LONG, transfer_floor_s=1.0, transfer_min_rate=1e6)
    go = threading.Event()
    fed.honest("site-1", _answering("site-1", after=go))
    hostile = fed.hostile("site-3")
    try:
        hostile.join(b"{}", timeout=LONG)
        assert len(fed.service.wait_for_sites(2, LONG)) == 2
        _, replies = _round(fed.service, {"site-1": b"train", "site-3": b"train"})
        trickle = hostile.push.future(transfer(hostile.task_id(), 50_000_000, chunk=1, every_s=0.1))
        assert wait_until(lambda: fed.service._guards.buffers.in_use == 1 or trickle.done())
        go.set()

        answer = json.loads(trickle.result(timeout=LONG))  # the site is still there: it hears why

        assert answer["ok"] is False and answer["retry"] is True and "too slow" in answer["reason"]
        assert wait_until(lambda: "site-1" in replies) and replies["site-1"] == b"answer of site-1"
        assert _logged(caplog, "site site-3 (", "upload dropped: too slow")
    finally:
        hostile.close()
        _finish(fed)


def test_instructions_a_site_stops_taking_are_dropped_and_free_the_sending_slots(
    kits: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: two pulls that never read their instruction held both sending slots for ever, and no other site
    received its instruction."""
    fed = serve(kits, heartbeat_s=0.2, idle_s=3.0)
    instruction = bytes(range(256)) * (32 << 12)  # 32 MiB: more than the flow-control windows take unread
    hostile, polite = fed.hostile("site-3"), fed.hostile("site-1")
    try:
        hostile.join(b"{}", timeout=LONG)
        polite.join(b"{}", timeout=LONG)
        _round(fed.service, {"site-1": instruction, "site-3": instruction})
        unread = [hostile.pull(b"{}", timeout=LONG * 2) for _ in range(2)]
        for stream in unread:
            stream.initial_metadata()  # the server has started sending it: it holds a sending slot

        received = framing.receive(polite.pull(b"{}", timeout=LONG), max_bytes=64 << 20)

        assert received.header.get("task") and bytes(received.payload) == instruction
        assert _logged(caplog, "site site-3 (", "instruction dropped: no frame moved")
    finally:
        hostile.close()
        polite.close()
        _finish(fed)


def test_seventy_stalled_calls_from_one_certificate_starve_neither_heartbeats_nor_rounds(kits: Path) -> None:
    """Before: 70 calls from one certificate that never sent their request took all 64 worker threads; honest
    sites' heartbeats (and pulls) waited behind them and the server declared the honest sites dead."""
    fed = serve(kits, heartbeat_s=0.2, site_timeout_s=5.0, idle_s=LONG)
    training_s = 2 * fed.service.config.site_timeout_s  # longer than the timeout: only heartbeats keep them alive

    def slow(name: str) -> Callable[[memoryview], bytes]:
        def answer(instruction: memoryview) -> bytes:
            time.sleep(training_s)  # the site's training
            return f"answer of {name}".encode()

        return answer

    for name in ("site-1", "site-2"):
        fed.honest(name, slow(name))
    hostile = fed.hostile("site-3")
    try:
        assert len(fed.service.wait_for_sites(2, LONG)) == 2
        beats = [hostile.stalled_heartbeat() for _ in range(40)]  # their request never sent
        pushes = [hostile.stalled_push([]) for _ in range(30)]  # not even a header

        round_, replies = _round(fed.service, {"site-1": b"train", "site-2": b"train"})
        dead: set[str] = set()
        while round_.is_alive():
            dead |= {"site-1", "site-2"} - set(fed.service.sites())
            round_.join(0.1)

        assert replies == {"site-1": b"answer of site-1", "site-2": b"answer of site-2"}
        assert not dead, f"honest sites declared dead during the round: {dead}"
        assert wait_until(lambda: sum(f.done() for f in beats + pushes) >= 40 + 28)  # answered or refused at once
        assert all(f.result() == b"{}" for f in beats)  # a heartbeat whose request never comes holds no thread
        refused = [f.exception().code() for f in pushes if f.done()]  # type: ignore[union-attr]
        assert refused == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 28  # two held, the rest refused at once
    finally:
        hostile.close()
        _finish(fed)


def _rss_mib() -> float:
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line in /proc/self/status")


def test_a_flood_of_oversized_transfers_leaves_the_servers_memory_where_it_was(kits: Path) -> None:
    """Before: the limit was 4 GiB whatever the model's size, and the receive buffer kept the size of the largest
    transfer it had taken: a 1 GiB stream took the server from 335 to 1,366 MB, never released."""
    if not Path("/proc/self/status").exists():
        pytest.skip("reads the process's memory from Linux's /proc/self/status")
    budget_mib = 64  # the growth allowed: well under one model (48 MiB) plus the 256 MiB stream the old code kept
    fed = serve(kits, heartbeat_s=0.2)
    limit = fed.service.limit_transfers(48 << 20)  # a 48 MiB model: transfers up to 97 MiB
    hostile = fed.hostile("site-1")
    try:
        hostile.join(b"{}", timeout=LONG)
        _, replies = _round(fed.service, {"site-1": b"train"}, keep=lambda payload: payload.nbytes)
        task = hostile.task_id()
        before = _rss_mib()

        flood = [hostile.push(transfer(task, 1 << 30, send=1 << 20), timeout=LONG) for _ in range(20)]
        oversized = hostile.push(transfer(task, 256 << 20), timeout=LONG)  # every byte of it sent
        held_after_refusals = fed.service._guards.buffers.held_bytes()
        allowed = hostile.push(transfer(task, limit - 4096), timeout=LONG)  # twice the model: large, allowed
        assert wait_until(lambda: "site-1" in replies and fed.service._guards.buffers.in_use == 0)
        grown = _rss_mib() - before

        for refusal in [*flood, oversized]:
            said = json.loads(refusal)
            assert said["ok"] is False and said["retry"] is False and "exceeds the limit" in said["reason"]
        assert held_after_refusals == 0  # nothing was ever allocated for a refused transfer
        assert json.loads(allowed) == {"ok": True} and replies["site-1"] == limit - 4096
        assert fed.service._guards.buffers.held_bytes() == 0  # the buffer grown past the model was let go
        assert grown < budget_mib, f"the process grew by {grown:.0f} MiB (budget {budget_mib} MiB)"
    finally:
        hostile.close()
        _finish(fed)
