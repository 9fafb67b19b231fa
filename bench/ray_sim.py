"""Many-site simulation on Ray: wall time per round and peak memory at 100 and 1,000 simulated sites.

A job of a small model (bench/ray_sim_task.py: generated rows at each site, a 16-16-2 MLP of 306 parameters, 40
patients per site, 5 local steps) runs on the Ray engine (``simulation.engine: ray``) as ``confide simulate
--engine ray`` runs it: the data read in the actors, the rounds, then the final model scored at every site on its
own test split. Each size runs in a fresh process (the driver), so each peak is its own; this process samples,
from outside, the driver and every process it started (Ray's GCS, raylet, agents and the actors): the sum of their
resident sets every 0.1 s (RSS, which counts shared pages, such as torch's libraries and Ray's object store, once
per process that maps them) and of their proportional sets every second (PSS, shared pages split among their
users). The target: 1,000 sites under 4 GiB. "start s" is Ray's start, the actors' (each imports torch) and
their reading of the sites' data; the first round also builds each sampled site's task.

    .venv/bin/python bench/ray_sim.py [--runs 100:1 1000:0.1] [--rounds 5] [--actors 2]

``--runs SITES:FRACTION``: the number of sites and the share of them that trains each round.
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

HERE = Path(__file__).resolve().parent


def _tree(root: int) -> list[int]:
    """``root`` and every process under it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _kib(path: str, field: str) -> int:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler:
    """The peak summed RSS (every ``every_s``) and PSS (every ``pss_every_s``: reading it costs the kernel more) of
    process ``root`` and all its descendants, sampled from another process than the one measured."""

    def __init__(self, root: int, every_s: float = 0.1, pss_every_s: float = 1.0) -> None:
        self.root, self.every_s, self.pss_every_s = root, every_s, pss_every_s
        self.peak_rss, self.peak_pss, self.processes = 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        last_pss = 0.0
        while not self._stop.is_set():
            pids = _tree(self.root)
            rss = sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in pids)
            if rss > self.peak_rss:
                self.peak_rss, self.processes = rss, len(pids)
            if time.monotonic() - last_pss >= self.pss_every_s:
                last_pss = time.monotonic()
                self.peak_pss = max(self.peak_pss, sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids))
            self._stop.wait(self.every_s)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Rounds:
    """Round events: each round's wall time."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def round_started(self, round: int, sites: list[str]) -> None:
        pass

    def site_finished(self, round: int, site: str, ok: bool, detail: str) -> None:
        pass

    def round_finished(self, result: object, global_arrays: object) -> None:
        self.seconds.append(float(result.seconds))  # type: ignore[attr-defined]


def one(sites: int, fraction: float, rounds: int, actors: int) -> dict[str, float]:
    """One job on the Ray engine, measured; the pieces of experiment_ray.run_many_sites, with each round timed."""
    from confide import job_plan
    from confide.config import parse_job
    from confide.sim_ray import RayFederation
    from confide.workloads.registry import make_workload

    with tempfile.TemporaryDirectory() as folder:
        job = parse_job(
            {
                "name": "ray-bench",
                "seed": 0,
                "task": {
                    "name": "python",
                    "entry": "ray_sim_task:task",
                    "code": str(HERE),
                    "sites": sites,
                    "lr": 0.01,
                    "batch_size": 16,
                    "device": "cpu",
                },
                "data": {"root": folder},
                "federation": {"rounds": rounds, "local_steps": 5, "fraction": fraction, "min_sites": 1},
                "simulation": {"engine": "ray", "actors": actors},
            }
        )
        clock = Rounds()
        t0 = time.perf_counter()
        workload = make_workload(job.task)
        names = workload.simulated_sites(job.data, lambda line: None)
        with RayFederation(job, names) as federation:
            started = time.perf_counter() - t0
            strategy = job_plan.build_strategy(
                job, sites=len(names), batch=workload.batch_size(), norm_names=workload.norm_names
            )
            loop = job_plan.loop_settings(job, sites=len(names), secure=None, deployed=False)
            run = federation.run(strategy, job_plan.initial_global(job, workload), loop, clock)
            t1 = time.perf_counter()
            scores = federation.scores(run.arrays)
            federation.reports()
            scored = time.perf_counter() - t1
        total = time.perf_counter() - t0
    accuracy = float(np.mean([s["accuracy"] for s in scores.values()]))
    per_round = np.array(clock.seconds)
    return {
        "sites": sites,
        "fraction": fraction,
        "trained": sum(len(r.sites) for r in run.history.rounds) / len(run.history.rounds),
        "actors": federation.actors,
        "start_s": started,
        "round_s": float(np.median(per_round)),
        "round_max_s": float(per_round.max()),
        "score_s": scored,
        "total_s": total,
        "accuracy": accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["100:1", "1000:0.1"], help="SITES:FRACTION per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--actors", type=int, default=2, help="Ray actors (default: this machine's 2 cores)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one run, its figures as JSON
    args = parser.parse_args()
    if args.one:
        sites, fraction = args.one.split(":")
        print(json.dumps(one(int(sites), float(fraction), args.rounds, args.actors)))
        return
    print(
        f"Ray engine, {args.rounds} rounds of 5 local steps, 306-parameter MLP, 40 patients per site, "
        f"{args.actors} actors of 1 CPU; memory: peak sum over the driver and every Ray process"
    )
    print(
        f"{'sites':>6} {'fraction':>8} {'trained/round':>13} {'start s':>8} {'s/round (median)':>17} "
        f"{'max s':>6} {'score all s':>11} {'peak RSS MB':>12} {'peak PSS MB':>12} {'procs':>6} {'accuracy':>8}"
    )
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for spec in args.runs:
        command = [sys.executable, __file__, "--one", spec, "--rounds", str(args.rounds), "--actors", str(args.actors)]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        with child, MemorySampler(child.pid) as memory:
            out, err = child.communicate()
        if child.returncode != 0:
            print(f"{spec}: failed ({err.strip().splitlines()[-1:]})", flush=True)
            continue
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"{r['sites']:>6} {r['fraction']:>8g} {r['trained']:>13.0f} {r['start_s']:>8.1f} {r['round_s']:>17.2f} "
            f"{r['round_max_s']:>6.2f} {r['score_s']:>11.2f} {memory.peak_rss / 1024:>12.0f} "
            f"{memory.peak_pss / 1024:>12.0f} {memory.processes:>6} {r['accuracy']:>8.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
