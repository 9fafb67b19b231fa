"""Coordination cost of the simulator: everything in a round that is not a site's own training.

A federation of N sites whose task does no real work (it returns a fixed small update) isolates what Confide
itself spends per round: encoding the instruction, decoding it at each site, encoding and decoding each update,
checking it, folding it into the aggregate. Also measures the time from start to the end of the first round.

    .venv/bin/python bench/sim_overhead.py [--sites 4 16] [--params 1000000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from confide.records import Arrays, Config, EvalRes, TrainRes
from confide.server.loop import LoopConfig, RoundResult
from confide.sim import simulate
from confide.strategies import FedAvg


def model(params: int, layers: int = 20) -> Arrays:
    per = params // layers
    rng = np.random.default_rng(0)
    return Arrays.from_dict({f"layer{i}.weight": rng.normal(size=per).astype(np.float32) for i in range(layers)})


class NoWork:
    """Returns the same small update every time: the site costs nothing but Confide's own handling."""

    def __init__(self, template: Arrays) -> None:
        self.update = Arrays.from_dict({n: np.full(v.shape, 1e-3, v.dtype) for n, v in template.items()})

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        return TrainRes(round=round, update=self.update, num_examples=10, metrics={"loss": 0.0})

    def evaluate(self, arrays: Arrays, config: Config, round: int) -> EvalRes:
        return EvalRes(round=round, num_examples=1, loss=0.0)


class FirstRound:
    """Notes when the first round finished, counted from ``start``."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.first = float("nan")

    def round_started(self, round: int, sites: list[str]) -> None:
        pass

    def site_finished(self, round: int, site: str, ok: bool, detail: str) -> None:
        pass

    def round_finished(self, result: RoundResult, global_arrays: Arrays) -> None:
        if result.round == 1:
            self.first = time.perf_counter() - self.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--params", type=int, default=1_000_000, help="model size in float32 parameters")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(f"model: {args.params:,} float32 parameters ({args.params * 4 / 1e6:.1f} MB), {args.rounds} rounds")
    print(f"{'sites':>5} {'first round s':>14} {'coord ms/round (median)':>24} {'p90 ms':>8} {'peak RSS MB':>12}")
    for sites in args.sites:
        start = time.perf_counter()
        initial = model(args.params)
        tasks = {f"site-{i + 1}": NoWork(initial) for i in range(sites)}
        clock = FirstRound(start)
        result = simulate(FedAvg(), tasks, initial, LoopConfig(rounds=args.rounds), events=clock)
        coord = np.array([r.coordination_seconds for r in result.history.rounds]) * 1000
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        p50, p90 = np.median(coord), np.percentile(coord, 90)
        print(f"{sites:>5} {clock.first:>14.3f} {p50:>24.1f} {p90:>8.1f} {rss:>12.0f}")


if __name__ == "__main__":
    main()
