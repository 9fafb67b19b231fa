"""Deployment at hospital scale, in one run: each bench below in turn, its table printed as it finishes.

1. start to first round (bench/start.py): server and 4 sites launched together;
2. a small model's round at 4, 16 and 64 sites (bench/transport.py --params 100000, sites as threads of 4
   processes);
3. a 100 MB model's round against its floor, with the server's memory in model copies (bench/transport.py);
4. rounds over a bad network against loopback (bench/network.py);
5. many-site simulation on the Ray engine (bench/ray_sim.py): 100 sites all training, and 1,000 sites with a
   tenth of them (100) training each round; wall time per round and peak memory over every process.

    .venv/bin/python bench/scale.py [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def section(title: str, script: str, *args: str) -> None:
    print(f"\n## {title}\n", flush=True)
    began = time.monotonic()
    done = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    print("\n".join(lines), flush=True)
    if done.returncode != 0:
        print(f"(failed with exit code {done.returncode}: {done.stderr.strip().splitlines()[-1:]})", flush=True)
    print(f"({time.monotonic() - began:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run each and fewer rounds (a look, not figures)")
    args = parser.parse_args()
    runs, rounds = ("1", "3") if args.quick else ("3", "5")
    section("start to first round", "start.py", "--runs", runs)
    section(
        "small model (400 kB), round time by number of sites",
        "transport.py",
        "--params",
        "100000",
        "--sites",
        "4",
        "16",
        "64",
        "--rounds",
        rounds,
        "--processes",
        "4",
    )
    section("100 MB model against its floor", "transport.py", "--sites", "4", "16", "--rounds", "3")
    section("a bad network", "network.py", "--rounds", "8" if args.quick else "20")
    section(
        "many-site simulation on Ray (100 sites; 1,000 sites, fraction 0.1)",
        "ray_sim.py",
        "--runs",
        "100:1",
        "1000:0.1",
        "--rounds",
        rounds,
    )


if __name__ == "__main__":
    main()
