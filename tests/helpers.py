"""Small fakes shared by tests: a numpy-only task whose behaviour is known exactly."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from confide.privacy.config import DpSgdSpec
from confide.records import Arrays, Config, EvalRes, TrainRes
from confide.workloads.kind import TorchSiteTask

if TYPE_CHECKING:
    from confide.config import JobConfig


def arrays(**values: list[float] | float) -> Arrays:
    return Arrays.from_dict({k: np.asarray(v, dtype=np.float32) for k, v in values.items()})


class QuadraticTask:
    """Local objective ||w - target||^2; each step moves w a fraction ``lr`` towards the target."""

    def __init__(self, target: Arrays, examples: int, *, fail: bool = False, nan: bool = False) -> None:
        self.target, self.examples, self.fail, self.nan = target, examples, fail, nan

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        if self.fail:
            raise RuntimeError("disk full")
        lr = float(config.get("lr", 0.5))
        steps = int(config.get("local_steps", 1))
        update = {}
        for name, w in arrays.items():
            current = w.astype(np.float64)
            for _ in range(steps):
                current = current - lr * (current - self.target[name])
            delta = (current - w).astype(w.dtype)
            if self.nan:
                delta = np.full_like(delta, np.nan)
            update[name] = delta
        loss = float(sum(np.sum((arrays[n] - self.target[n]) ** 2) for n in arrays))
        return TrainRes(
            round=round, update=Arrays.from_dict(update), num_examples=self.examples, metrics={"loss": loss}
        )

    def evaluate(self, arrays: Arrays, config: Config, round: int) -> EvalRes:
        loss = float(sum(np.sum((arrays[n] - self.target[n]) ** 2) for n in arrays))
        return EvalRes(round=round, num_examples=self.examples, loss=loss, metrics={"distance": loss**0.5})


def site_task_of(
    config: Any, train: Any, test: Any, *, site: str, seed: int = 0, dp_sgd: DpSgdSpec | None = None
) -> TorchSiteTask:
    """A built-in kind's site task for its task config, on the CPU (as a deployed site builds it)."""
    from confide.workloads.registry import make_workload

    workload = make_workload(config.model_copy(update={"device": "cpu"}))
    task = workload.task(train, test, site=site, seed=seed, dp_sgd=dp_sgd)
    assert isinstance(task, TorchSiteTask)
    return task


def serve_in_thread(
    server_kit: Path, job: JobConfig, *, wait_s: float = 120.0, listen_s: float = 120.0
) -> tuple[threading.Thread, dict[str, object]]:
    """Serve ``job`` from ``server_kit`` on a free port, in a thread of this process, with the quadratic task's
    initial model (w = [0, 0]); return once it listens. The result dict gets "port", then "final" (the final
    model's path) or "error" (what the server raised)."""
    from confide.deploy import serve

    result: dict[str, object] = {}
    listening = threading.Event()

    def on_listen(port: int) -> None:
        result["port"] = port
        listening.set()

    def target() -> None:
        try:
            result["final"] = serve(
                server_kit, job, initial=lambda _: arrays(w=[0.0, 0.0]), port=0, wait_s=wait_s, on_listen=on_listen
            )
        except Exception as exc:  # reported to the test
            result["error"] = exc
            listening.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert listening.wait(listen_s), "the server did not start listening"
    return thread, result
