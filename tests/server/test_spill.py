"""The first round's held updates: a large one waits in a file, not in the server's memory, and the round comes
out the same."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest

from confide.server import spill
from confide.server.guard import GuardConfig
from confide.server.loop import LoopConfig, ServerLoop
from confide.site.runner import SiteRunner
from confide.strategies import FedAvg
from confide.transport.inmemory import InMemoryTransport
from tests.helpers import QuadraticTask, arrays

START = arrays(w=[0.0, 0.0, 0.0])
TARGETS = {"a": [2.0, 0.0, 1.0], "b": [0.0, 2.0, -1.0], "c": [1.0, 1.0, 0.0], "d": [3.0, -1.0, 0.5]}


def test_a_large_held_update_is_a_read_only_map_of_a_file_with_the_same_bytes() -> None:
    payload = memoryview(np.arange(1000, dtype=np.float32).tobytes())

    small = spill.detached(payload, spill_bytes=10_000)
    large = spill.detached(payload, spill_bytes=1_000)
    spill.evict(large)  # its pages leave memory; reading it again reads the file

    assert isinstance(small, bytes) and bytes(small) == bytes(payload)
    assert isinstance(large, memoryview) and isinstance(large.obj, mmap.mmap) and large.readonly
    assert bytes(large) == bytes(payload)


def _first_rounds() -> np.ndarray:
    sites = {name: SiteRunner(name, QuadraticTask(arrays(w=t), 10)) for name, t in TARGETS.items()}
    loop = ServerLoop(FedAvg({"lr": 0.5}), InMemoryTransport(sites), START, LoopConfig(rounds=2, guard=GuardConfig()))
    for rnd in (1, 2):
        loop.run_round(rnd)
    assert not loop.guard.calibrating  # the first round held updates to set the bound, and released them
    return np.asarray(loop.global_arrays["w"])


def test_held_updates_kept_in_files_give_the_round_that_copies_give(monkeypatch: pytest.MonkeyPatch) -> None:
    kept_in_memory = _first_rounds()
    spilled: list[int] = []
    detached = spill.detached

    def every_one_in_a_file(payload: bytes | memoryview, *, spill_bytes: int | None = None) -> bytes | memoryview:
        spilled.append(memoryview(payload).nbytes)
        return detached(payload, spill_bytes=0)

    monkeypatch.setattr("confide.server.loop.detached", every_one_in_a_file)

    np.testing.assert_array_equal(_first_rounds(), kept_in_memory)
    assert len(spilled) >= 2  # the first round's first updates were held, each in a file


def _rss_file_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile line in /proc/self/status")


def test_folding_a_held_update_gives_its_pages_back_array_by_array() -> None:
    """Before: a held 100 MB update, read back from its file to be folded, stayed resident until the round's held
    updates were let go: the first round of a 100 MB job peaked at 4.1 model copies instead of 3.3."""
    import os

    if not os.path.exists("/proc/self/status"):
        pytest.skip("reads the process's memory from Linux's /proc/self/status")
    from confide import serde
    from confide.records import TrainRes
    from confide.strategies.aggregate import accumulate, zeros_like

    update = arrays(**{f"layer{i}": np.full(2 << 20, float(i), np.float32) for i in range(4)})  # 32 MiB
    held = serde.decode(spill.detached(serde.encode(TrainRes(round=1, update=update, num_examples=1)), spill_bytes=0))
    assert isinstance(held, TrainRes)
    before = _rss_file_mib()
    total = sum(float(value.sum()) for value in held.update.values())  # every page read: resident now
    read = _rss_file_mib() - before
    acc = zeros_like(held.update)

    accumulate(acc, held.update, 0.5)

    left = _rss_file_mib() - before
    assert total == sum(float(i) * (2 << 20) for i in range(4))
    assert read > 24 and left < 4, (read, left)  # 32 MiB read in, and given back once folded
    assert all(np.all(acc[f"layer{i}"] == 0.5 * i) for i in range(4))
