"""Round time over a bad network, against the same job on a clean loopback link.

The server runs in this process with mutual TLS; each of N sites (threads of one child process) dials it through
its own fault-injecting TCP proxy (tests/network/proxy.py). Sites do no training (each returns a fixed update), so
a round costs what the network and Confide spend on it. Faults, each alone:

- loopback: the proxies forward untouched (the baseline);
- latency: 100 ms added each way;
- bandwidth: 10 MB/s each way, per connection;
- resets: a random open connection reset every 2 s on average, at every proxy;
- partition: the last site cut off after round 2 for three rounds, then healed (it rejoins; the others go on).

    .venv/bin/python bench/network.py [--params 250000] [--sites 3] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.network.proxy import Faults, proxies  # noqa: E402

from confide.config import JobConfig, parse_job  # noqa: E402
from confide.deploy import run_site, serve  # noqa: E402
from confide.provision import parse_federation, provision  # noqa: E402
from confide.records import Arrays, Config, EvalRes, TrainRes  # noqa: E402
from confide.site.runner import SiteRunner  # noqa: E402


def model(params: int, layers: int = 10) -> Arrays:
    rng = np.random.default_rng(0)
    return Arrays.from_dict({f"layer{i}": rng.normal(size=params // layers).astype(np.float32) for i in range(layers)})


class FixedUpdate:
    def __init__(self, template: Arrays) -> None:
        self.update = Arrays.from_dict({n: np.full(v.shape, 1e-3, v.dtype) for n, v in template.items()})

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        time.sleep(0.2)  # a short local step, so that a partition spans whole rounds
        return TrainRes(round=round, update=self.update, num_examples=10)

    def evaluate(self, arrays: Arrays, config: Config, round: int) -> EvalRes:
        return EvalRes(round=round, num_examples=1, loss=0.0)


def run(fault: str, params: int, sites: int, rounds: int) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = [f"site-{i + 1}" for i in range(sites)]
        provision(parse_federation({"name": "net", "server": {"host": "localhost", "port": 1}, "sites": names}), root)
        partition = fault == "partition"
        job = parse_job(
            {
                "data": {"root": tmp},
                "federation": {
                    "rounds": rounds,
                    "local_steps": 1,
                    "min_sites": sites - 1 if partition else sites,
                    "start_sites": sites,
                    "site_timeout_s": 3.0,
                    "max_update_norm": "off",
                },
                "report": {"out": str(root / "report")},
            }
        )
        faults = {
            "loopback": Faults(),
            "latency": Faults(delay_s=0.1),
            "bandwidth": Faults(rate=10e6),
            "resets": Faults(reset_every_s=2.0),
            "partition": Faults(),
        }[fault]
        template = model(params)
        port: dict[str, int] = {}
        listening = threading.Event()

        def serving() -> None:
            serve(
                root / "server",
                job,
                initial=lambda _: template,
                port=0,
                wait_s=120,
                on_listen=lambda p: (port.update(p=p), listening.set()),
            )

        server = threading.Thread(target=serving, daemon=True)
        server.start()
        if not listening.wait(60):
            raise SystemExit("the server did not start")

        def runner(name: str, _: JobConfig) -> SiteRunner:
            return SiteRunner(name, FixedUpdate(template))

        with proxies(("127.0.0.1", port["p"]), names, faults) as near:
            threads = [
                threading.Thread(
                    target=run_site,
                    args=(root / "sites" / name, runner),
                    kwargs={"address": f"localhost:{near[name].port}", "give_up_after_s": 300},
                    daemon=True,
                )
                for name in names
            ]
            for t in threads:
                t.start()
            if partition:
                cut_after(root / "report" / "rounds.json", near[names[-1]].faults, names[-1], after=2, rounds=3)
            server.join(600)
            for t in threads:
                t.join(120)
        return list(json.loads((root / "report" / "rounds.json").read_text()))


def cut_after(rounds_file: Path, faults: Faults, site: str, *, after: int, rounds: int) -> None:
    """Cut ``site`` once ``after`` rounds have closed; heal it once ``rounds`` more closed without it."""

    def closed() -> list[dict[str, object]]:
        try:
            return json.loads(rounds_file.read_text()) if rounds_file.exists() else []
        except ValueError:
            return []

    def watch() -> None:
        deadline = time.monotonic() + 600
        while len(closed()) < after and time.monotonic() < deadline:
            time.sleep(0.02)
        faults.cut = True
        while sum(site not in r["sites"] for r in closed()) < rounds and time.monotonic() < deadline:  # type: ignore[operator]
            time.sleep(0.02)
        faults.cut = False

    threading.Thread(target=watch, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=250_000)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--faults", nargs="+", default=["loopback", "latency", "bandwidth", "resets", "partition"])
    args = parser.parse_args()
    print(
        f"{args.sites} sites through their own proxies, model of {args.params:,} float32 ({args.params * 4 / 1e6:.1f} "
        f"MB), {args.rounds} rounds, each site's local step 0.2 s"
    )
    print(f"{'fault':<10} {'rounds done':>11} {'median round s':>15} {'vs loopback':>11} {'slowest s':>10}  sites")
    base = None
    for fault in args.faults:
        rounds = run(fault, args.params, args.sites, args.rounds)
        times = [float(r["seconds"]) for r in rounds]  # type: ignore[arg-type]
        median = statistics.median(times)
        base = base if base is not None else median
        counts = "".join(str(len(r["sites"])) for r in rounds)  # type: ignore[arg-type]
        print(f"{fault:<10} {len(rounds):>11} {median:>15.3f} {median / base:>10.1f}x {max(times):>10.2f}  {counts}")


if __name__ == "__main__":
    main()
