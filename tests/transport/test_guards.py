"""The server's stream guards on their own: buffers, pace, slots, the watchdog, the log throttle."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from confide.errors import ConfigError, PayloadError, PayloadTooLarge
from confide.transport import framing
from confide.transport.buffers import BufferPool
from confide.transport.grpc_server import HEADER_ALLOWANCE, FederationService, ServiceConfig
from confide.transport.guards import Busy, Pace, Slots, Stalled, Watchdog
from confide.transport.peers import Throttle
from tests.transport.hostile import wait_until


def test_a_buffer_wait_is_bounded() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        pool = BufferPool(1)
        held = await pool.acquire(1.0)
        second = await pool.acquire(0.2)
        assert held is not None
        held.release()
        return held is not None, second is None, await pool.acquire(0.2) is not None

    assert asyncio.run(scenario()) == (True, True, True)


def test_buffers_are_lent_in_the_order_they_were_asked_for_and_given_back_from_another_thread() -> None:
    """The server loop gives a buffer back from its own thread; the upload waiting longest on the event loop
    has it next."""
    order: list[str] = []

    async def scenario() -> None:
        pool = BufferPool(1)
        first = await pool.acquire(1.0)
        assert first is not None

        async def ask(name: str) -> None:
            lease = await pool.acquire(60.0)
            order.append(name)
            assert lease is not None
            await asyncio.sleep(0)
            lease.release()

        early = asyncio.create_task(ask("early"))
        while pool.waiting < 1:
            await asyncio.sleep(0.01)
        late = asyncio.create_task(ask("late"))
        while pool.waiting < 2:
            await asyncio.sleep(0.01)
        releaser = threading.Thread(target=first.release)
        releaser.start()
        await asyncio.wait_for(asyncio.gather(early, late), 60)
        releaser.join(60)
        assert pool.in_use == 0

    asyncio.run(scenario())
    assert order == ["early", "late"]


def test_a_wait_given_up_passes_its_buffer_to_the_next_in_line() -> None:
    """An upload cancelled while it waits (its call cut) must not keep the buffer it was about to be granted."""

    async def scenario() -> tuple[int, bool]:
        pool = BufferPool(1)
        first = await pool.acquire(1.0)
        assert first is not None
        doomed = asyncio.create_task(pool.acquire(60.0))
        patient = asyncio.create_task(pool.acquire(60.0))
        while pool.waiting < 2:
            await asyncio.sleep(0.01)
        doomed.cancel()
        first.release()
        lease = await asyncio.wait_for(patient, 60)
        with contextlib.suppress(asyncio.CancelledError):
            await doomed
        in_use = pool.in_use
        assert lease is not None
        lease.release()
        return in_use, pool.in_use == 0

    assert asyncio.run(scenario()) == (1, True)


def test_a_buffer_grown_past_the_model_is_let_go_and_one_within_it_kept() -> None:
    async def scenario() -> tuple[int, int, int]:
        pool = BufferPool(1, keep_bytes=1000)
        lease = await pool.acquire(1.0)
        assert lease is not None
        lease.buffer(900)
        lease.release()
        kept = pool.held_bytes()
        lease = await pool.acquire(1.0)
        assert lease is not None
        lease.buffer(5000)
        lease.release()
        return kept, pool.held_bytes(), pool.in_use

    assert asyncio.run(scenario()) == (900, 0, 0)


def test_a_transfer_too_large_is_refused_before_it_is_allocated() -> None:
    allocated: list[int] = []

    def allocate(size: int) -> memoryview:
        allocated.append(size)
        return framing.new_buffer(size)

    with pytest.raises(PayloadTooLarge, match="exceeds the limit of 100 bytes"):
        framing.receive(iter([framing.control(size=10**12)]), max_bytes=100, allocate=allocate)
    with pytest.raises(PayloadError, match="valid size"):
        framing.announced_size({"size": True}, 100)
    assert allocated == []


def test_a_transfer_that_falls_behind_its_pace_is_stalled_and_one_that_keeps_up_is_not() -> None:
    keeping_up = Pace(10_000, floor_s=1.0, min_rate=1000.0)
    falling_behind = Pace(10_000, floor_s=1.0, min_rate=1000.0)
    start = keeping_up.start

    keeping_up.check(500, start + 0.5)  # within the floor: anything goes
    keeping_up.check(2000, start + 3.0)  # 2,500 bytes by 3 s; 2,000 needed
    falling_behind.check(500, start + 0.5)

    with pytest.raises(Stalled, match=r"too slow: 501 of 10000 bytes .* within 11 s"):
        falling_behind.check(1, falling_behind.start + 3.0)
    assert keeping_up.deadline_s == 11.0


def test_a_site_holds_only_its_share_of_streams_and_all_sites_only_theirs() -> None:
    slots = Slots({"push": 2, "pull": 2}, total=3)
    first, second = slots.take("site-1", "push"), slots.take("site-1", "push")

    with pytest.raises(Busy, match="already has 2 push streams"):
        slots.take("site-1", "push")
    third = slots.take("site-2", "pull")
    with pytest.raises(Busy, match="3 transfers are open"):
        slots.take("site-3", "pull")
    first.release()
    first.release()  # twice is once

    assert slots.held("site-1", "push") == 1
    slots.take("site-3", "pull").release()
    second.release()
    third.release()
    assert slots.held("site-1", "push") == 0 and slots._all == 0


def test_the_watchdog_cancels_an_idle_stream_once_and_spares_one_that_moves() -> None:
    watchdog = Watchdog(idle_s=2.0)
    cancelled: list[str] = []
    moving = threading.Event()

    with (
        watchdog.watch("idle", lambda: cancelled.append("idle")) as idle,
        watchdog.watch("busy", lambda: cancelled.append("busy")) as busy,
    ):

        def keep_moving() -> None:
            while not moving.is_set():
                busy.touch()
                moving.wait(0.05)

        mover = threading.Thread(target=keep_moving)
        mover.start()
        assert wait_until(lambda: bool(cancelled))
        assert wait_until(lambda: watchdog._thread is not None)  # still watching the busy one
        moving.set()
        mover.join(10)

    assert cancelled == ["idle"]  # once, and never the stream that moved
    assert idle.dropped is not None and "no frame moved" in idle.dropped
    assert wait_until(lambda: watchdog._thread is None)  # nothing watched: its thread has ended


def test_the_throttle_lets_the_first_line_through_and_counts_the_rest() -> None:
    throttle = Throttle(every_s=3600)

    first, second, third, other = throttle.allow("a"), throttle.allow("a"), throttle.allow("a"), throttle.allow("b")

    assert (first, second, third, other) == (0, None, None, 0)
    assert throttle._last["a"][1] == 2


def test_the_transfer_limit_follows_the_model() -> None:
    service = FederationService(b"", ServiceConfig(job={}))

    limit = service.limit_transfers(100 << 20)

    assert limit == service.config.max_bytes == 2 * (100 << 20) + HEADER_ALLOWANCE
    assert service._guards.buffers.keep_bytes == (100 << 20) + HEADER_ALLOWANCE
    assert service._guards.buffers.count == 1  # a large model: one update received at a time (3 model copies)
    with pytest.raises(ConfigError, match="model_bytes"):
        service.limit_transfers(0)


def test_a_small_models_updates_are_received_several_at_once_within_the_receive_budget() -> None:
    service = FederationService(b"", ServiceConfig(job={}, receive_budget=16 << 20))

    service.limit_transfers(400_000)

    buffers = service._guards.buffers.count
    assert buffers == (16 << 20) // (400_000 + HEADER_ALLOWANCE) == 11
    assert buffers * (400_000 + HEADER_ALLOWANCE) <= 16 << 20  # what they may hold stays within the budget


def test_settings_that_cannot_work_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="idle_s"):
        ServiceConfig(job={}, idle_s=0)
    with pytest.raises(ConfigError, match="max_transfers"):
        ServiceConfig(job={}, max_transfers=0)
