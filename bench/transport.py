"""One round of a large model over the real transport (gRPC, mutual TLS, loopback), against its floor.

The server runs in this process; each of the N sites runs in its own child process (``--processes`` groups them
as threads of fewer processes) and does no training (each returns a fixed update), so a round costs only what
Confide spends: streaming the global model to every site, streaming every update back, checking and averaging
them. All of it shares this machine's cores. The floor is the same work done in one process without a network:
serialise every update, copy the bytes once, deserialise, average. Peak server memory is sampled from
/proc/self/status while the rounds run, from before the server creates its model, and given in copies of the model
(the global model, the running aggregate and the one update being received are three).

    .venv/bin/python bench/transport.py [--params 25000000] [--sites 4 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from confide import serde
from confide.config import JobConfig, parse_job
from confide.deploy import serve
from confide.deploy_site import run_site
from confide.provision import parse_federation, provision
from confide.records import Arrays, Config, EvalRes, TrainRes
from confide.server.loop import RoundResult, ServerLoop
from confide.site.runner import SiteRunner
from confide.strategies.aggregate import accumulate, scale, zeros_like


def model(params: int, layers: int = 50) -> Arrays:
    rng = np.random.default_rng(0)
    return Arrays.from_dict(
        {f"layer{i}.weight": rng.normal(size=params // layers).astype(np.float32) for i in range(layers)}
    )


class FixedUpdate:
    def __init__(self, template: Arrays) -> None:
        self.update = Arrays.from_dict({n: np.full(v.shape, 1e-3, v.dtype) for n, v in template.items()})

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        return TrainRes(round=round, update=self.update, num_examples=10)

    def evaluate(self, arrays: Arrays, config: Config, round: int) -> EvalRes:
        return EvalRes(round=round, num_examples=1, loss=0.0)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def floor_seconds(params: int, sites: int) -> float:
    """Serialise each site's update, copy the bytes once, deserialise, fold into one average."""
    template = model(params)
    update = FixedUpdate(template).update
    start = time.perf_counter()
    encoded_global = serde.encode_arrays(template)
    for _ in range(sites):
        bytes(bytearray(encoded_global))  # the global model sent to each site
    acc = zeros_like(template)
    for _ in range(sites):
        payload = bytes(bytearray(serde.encode(TrainRes(round=1, update=update, num_examples=10))))
        res = serde.decode(payload)
        assert isinstance(res, TrainRes)
        accumulate(acc, res.update, 1.0)
    scale(acc, 1.0 / sites)
    return time.perf_counter() - start


def sites_process(kits: Path, port: int, names: list[str], params: int) -> None:
    template = model(params)

    def runner(name: str, job: JobConfig) -> SiteRunner:
        return SiteRunner(name, FixedUpdate(template))

    threads = [
        threading.Thread(target=run_site, args=(kits / "sites" / name, runner), kwargs={"address": f"localhost:{port}"})
        for name in names
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class RoundCpu:
    """The server process's CPU time in each round (all its threads: the event loop, gRPC's, the server loop):
    what the server itself spends, which on a machine of its own bounds the round, whatever the sites cost."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._original = ServerLoop.run_round

    def __enter__(self) -> RoundCpu:
        original, seconds = self._original, self.seconds

        def run_round(loop: ServerLoop, rnd: int) -> RoundResult:
            began = time.process_time()
            try:
                return original(loop, rnd)
            finally:
                seconds.append(time.process_time() - began)

        ServerLoop.run_round = run_round  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        ServerLoop.run_round = self._original  # type: ignore[method-assign]


def bench(params: int, sites: int, rounds: int, port: int, processes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = [f"site-{i + 1}" for i in range(sites)]
        provision(
            parse_federation({"name": "bench", "server": {"host": "localhost", "port": port}, "sites": names}), root
        )
        job = parse_job(
            {
                "data": {"root": tmp},
                "federation": {"rounds": rounds, "local_steps": 1, "min_sites": sites},
                "report": {"out": str(root / "report")},
            }
        )
        model_mb = params * 4 / 1e6
        baseline = rss_mb()  # what the process holds before the server makes its model
        peak = [0.0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                peak[0] = max(peak[0], rss_mb())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        groups = [names[i::processes] for i in range(min(processes, sites))]
        children = [
            subprocess.Popen(
                [sys.executable, __file__, "--sites-process", str(root), str(port), ",".join(group), str(params)],
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            )
            for group in groups
        ]
        with RoundCpu() as cpu:
            serve(root / "server", job, initial=lambda _: model(params), wait_s=120)
        stop.set()
        for child in children:
            child.wait(60)
        history = json.loads((root / "report" / "rounds.json").read_text())
        wall = float(np.median([r["seconds"] for r in history]))
        return {
            "model_mb": model_mb,
            "round_s": wall,
            "server_cpu_s": float(np.median(cpu.seconds)),
            "peak_copies": (peak[0] - baseline) / model_mb,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=25_000_000)
    parser.add_argument("--sites", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=50917)
    parser.add_argument("--processes", type=int, default=0, help="site processes (0: one per site, as in a deployment)")
    parser.add_argument("--sites-process", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sites_process:
        kits, port, names, params = args.sites_process
        sites_process(Path(kits), int(port), names.split(","), int(params))
        return
    print(f"model: {args.params:,} float32 parameters ({args.params * 4 / 1e6:.0f} MB); median of {args.rounds} rounds")
    print("targets: round within 1.5x of the floor; server peak at most 3 model copies")
    print("server CPU: the server process's own CPU time per round (every thread), what it needs of one core")
    print(
        f"{'sites':>5} {'round s':>8} {'server CPU s':>13} {'floor s':>8} {'ratio':>6} "
        f"{'server peak (model copies)':>27}"
    )
    for sites in args.sites:
        floor = min(floor_seconds(args.params, sites) for _ in range(2))
        got = bench(args.params, sites, args.rounds, args.port, args.processes or sites)
        print(
            f"{sites:>5} {got['round_s']:>8.3f} {got['server_cpu_s']:>13.3f} {floor:>8.3f} "
            f"{got['round_s'] / floor:>6.2f} {got['peak_copies']:>27.1f}"
        )


if __name__ == "__main__":
    main()
