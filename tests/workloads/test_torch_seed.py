"""A model built from the job's seed is the same whatever other threads of the process build meanwhile (a server
and its sites as threads of one process: the tests' and benches' deployments)."""

from __future__ import annotations

import threading

import numpy as np
import torch
from pydantic import BaseModel

from confide.api import NoFields, SiteData, TaskKind
from confide.workloads.kind import KindWorkload, Training


def _wide(fields: BaseModel) -> torch.nn.Module:
    return torch.nn.Sequential(*(torch.nn.Linear(256, 256) for _ in range(4)))


KIND = TaskKind(
    read_site=lambda fields, place: SiteData(train=[], test=None),
    build_model=_wide,
    evaluate=lambda fields, model, data: {"score": 0.0},
    metrics=("score",),
)


def test_the_initial_model_is_the_seeds_while_another_thread_builds_networks() -> None:
    workload = KindWorkload(KIND, NoFields(), Training("wide", lr=0.1, batch_size=1, device="cpu"))
    alone = workload.initial(7)
    stop = threading.Event()

    def site_threads_building() -> None:  # as site threads do when they set up their tasks
        while not stop.is_set():
            workload.network()

    builders = [threading.Thread(target=site_threads_building, daemon=True) for _ in range(2)]
    for builder in builders:
        builder.start()
    try:
        built = [workload.initial(7) for _ in range(15)]
    finally:
        stop.set()
        for builder in builders:
            builder.join(30)

    for again in built:
        assert all(np.array_equal(alone[name], again[name]) for name in alone.names())
