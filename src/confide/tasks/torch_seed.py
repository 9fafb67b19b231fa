"""Torch's global generator, seeded around code that draws from it, one thread at a time.

A torch process has one global generator. Building a network draws its initial weights from it, and a task's
augmentation may draw from it too. Where a server and sites share a process as threads (tests, benches, an
in-process deployment), their draws would interleave: the server's model built from the job's seed, while a site
thread initialises its own network, would get other weights than the same seed gives alone. So every use of the
global generator in Confide holds :data:`GLOBAL_RNG` (re-entrant): a seeded block draws exactly what its seed gives.
Separate processes (a real deployment) never wait on it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

GLOBAL_RNG = threading.RLock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's global generator seeded with ``seed`` inside (this thread alone drawing from it), restored after."""
    with GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
