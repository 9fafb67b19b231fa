"""One site of a federation as a process of its own, for the namespace harness (tests/network/netns.py): it dials
the server through the kit's certificates and answers with a task whose result is known exactly.

    python -m tests.network.site_process --kit KIT --server HOST:PORT --target 2,0 [--train-s 0.5]
    python -m tests.network.site_process --kit KIT --server HOST:PORT --fixed [--train-s 0.2]

``--target`` trains the quadratic task of tests/helpers.py towards ``target`` (one value per entry of the model's
array ``w``, or one value for every entry); ``--fixed`` returns an update of 1e-3 everywhere, shaped as the model
received (the network bench: a round costs what the network and Confide spend on it). The last line printed is
``answered N`` (the instructions answered), or ``failed: ERROR``, with exit code 1."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from confide.config import JobConfig
from confide.deploy_site import run_site
from confide.records import Arrays, Config, EvalRes, TrainRes
from confide.site.runner import SiteRunner


class Quadratic:
    """The quadratic task of tests/helpers.py (each local step moves w a fraction ``lr`` towards ``target``; ten
    examples), without that module's import of torch, which would add seconds to every site's start. Each
    training takes ``seconds`` of wall time first, as real local steps do. The tests compare what a job of these
    reaches with the simulator's run of tests/helpers.py's task, so the two cannot drift apart unseen."""

    def __init__(self, target: Arrays, seconds: float) -> None:
        self.target, self.seconds = target, seconds

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        time.sleep(self.seconds)
        lr, steps = float(config.get("lr", 0.5)), int(config.get("local_steps", 1))
        update = {}
        for name, w in arrays.items():
            current = w.astype(np.float64)
            for _ in range(steps):
                current = current - lr * (current - self.target[name])
            update[name] = (current - w).astype(w.dtype)
        return TrainRes(
            round=round, update=Arrays.from_dict(update), num_examples=10, metrics={"loss": self._loss(arrays)}
        )

    def evaluate(self, arrays: Arrays, config: Config, round: int) -> EvalRes:
        return EvalRes(round=round, num_examples=10, loss=self._loss(arrays))

    def _loss(self, arrays: Arrays) -> float:
        return float(sum(np.sum((arrays[n] - self.target[n]) ** 2) for n in arrays))


class FixedUpdate:
    """An update of 1e-3 in every entry of the model received, after ``seconds`` of pretended local training."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.update: Arrays | None = None

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        time.sleep(self.seconds)
        if self.update is None:
            self.update = Arrays.from_dict({n: np.full(v.shape, 1e-3, v.dtype) for n, v in arrays.items()})
        return TrainRes(round=round, update=self.update, num_examples=10)

    def evaluate(self, arrays: Arrays, config: Config, round: int) -> EvalRes:
        return EvalRes(round=round, num_examples=1, loss=0.0)


def target_of(text: str, size: int | None = None) -> Arrays:
    """``"2,0"`` as the array ``w`` = [2, 0]; a single value repeated ``size`` times when ``size`` is given."""
    values = [float(v) for v in text.split(",")]
    if size is not None and len(values) == 1:
        values = values * size
    return Arrays.from_dict({"w": np.asarray(values, dtype=np.float32)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kit", type=Path, required=True)
    parser.add_argument("--server", required=True, help="host:port the site dials")
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--target", help="the quadratic task's target: values of w, comma-separated")
    task.add_argument("--fixed", action="store_true", help="answer 1e-3 everywhere")
    parser.add_argument("--size", type=int, default=None, help="repeat a single --target value this many times")
    parser.add_argument("--train-s", type=float, default=0.0, help="wall time of each training")
    parser.add_argument("--give-up-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def runner(name: str, job: JobConfig) -> SiteRunner:
        if args.fixed:
            return SiteRunner(name, FixedUpdate(args.train_s))
        return SiteRunner(name, Quadratic(target_of(args.target, args.size), args.train_s))

    try:
        answered = run_site(args.kit, runner, address=args.server, give_up_after_s=args.give_up_s)
    except Exception as exc:  # the harness reads this line
        print(f"failed: {type(exc).__name__}: {exc}", flush=True)
        return 1
    print(f"answered {answered}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
