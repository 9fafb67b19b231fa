"""The first round's held updates: a large one waits in a file, not in the server's memory, and the round comes
out the same."""

from __future__ import annotations

import mmap

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
