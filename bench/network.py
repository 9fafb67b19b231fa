"""Round time over a bad network, against the same job on a clean link: on loopback, and on separate addresses.

Loopback rows: the server runs in this process with mutual TLS; each of N sites (threads of this process) dials it
through its own fault-injecting TCP proxy (tests/network/proxy.py). Network-namespace rows (tests/network/netns.py,
where the machine allows them): ``confide server`` runs in a namespace of its own and each site is a process in its
own namespace, joined to the root namespace by a veth pair; the proxies run in the root namespace between them.
Sites do no training (each returns a fixed update after 0.2 s), so a round costs what the network and Confide spend
on it. Faults, each alone:

- none: the proxies forward untouched (the baseline of each kind of row);
- latency: 100 ms added each way by the proxy;
- bandwidth: 10 MB/s each way, per connection, paced by the proxy;
- tbf (namespaces only): 10 MB/s each way on each site's link, shaped by the kernel (``tc ... tbf``);
- resets: a random open connection reset every 2 s on average, at every proxy;
- partition: the last site cut off by its proxy after round 2 for three rounds, then healed (it rejoins; the others
  go on);
- link-down (namespaces only): the same, by taking the site's link down: every packet dropped, nothing reset.

    .venv/bin/python bench/network.py [--params 250000] [--sites 3] [--rounds 20] [--netns auto|on|off]

With ``--netns auto`` (the default) the namespace rows run where namespaces can be made and a line says why not
elsewhere; ``on`` fails instead, ``off`` leaves them out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.network.netns import Netns, NetnsUnavailable, tbf_unavailable, unavailable  # noqa: E402
from tests.network.netns_job import Running, run_job  # noqa: E402
from tests.network.proxy import Faults, proxies  # noqa: E402
from tests.network.site_process import FixedUpdate  # noqa: E402

from confide.config import JobConfig, parse_job  # noqa: E402
from confide.deploy import serve  # noqa: E402
from confide.deploy_site import run_site  # noqa: E402
from confide.provision import parse_federation, provision  # noqa: E402
from confide.records import Arrays  # noqa: E402
from confide.site.runner import SiteRunner  # noqa: E402

TRAIN_S = 0.2  # each site's pretended local step, so that a partition spans whole rounds
CUT = {"partition", "link-down"}
FAULTS = ["none", "latency", "bandwidth", "tbf", "resets", "partition", "link-down"]
NETNS_ONLY = {"tbf", "link-down"}  # the kernel's shaping and the link itself exist only between namespaces


def model(params: int, layers: int = 10) -> Arrays:
    rng = np.random.default_rng(0)
    return Arrays.from_dict({f"layer{i}": rng.normal(size=params // layers).astype(np.float32) for i in range(layers)})


def proxy_faults(fault: str) -> Faults:
    return {
        "latency": Faults(delay_s=0.1),
        "bandwidth": Faults(rate=10e6),
        "resets": Faults(reset_every_s=2.0),
    }.get(fault, Faults())


def federation(fault: str, sites: int) -> dict[str, object]:
    return {
        "min_sites": sites - 1 if fault in CUT else sites,
        "start_sites": sites,
        "site_timeout_s": 3.0,
        "max_update_norm": "off",
    }


def on_loopback(fault: str, params: int, sites: int, rounds: int) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = [f"site-{i + 1}" for i in range(sites)]
        provision(parse_federation({"name": "net", "server": {"host": "localhost", "port": 1}, "sites": names}), root)
        job = parse_job(
            {
                "data": {"root": tmp},
                "federation": {"rounds": rounds, "local_steps": 1, **federation(fault, sites)},
                "report": {"out": str(root / "report")},
            }
        )
        template = model(params)
        port: dict[str, int] = {}
        listening = threading.Event()

        def listen(bound: int) -> None:
            port["p"] = bound
            listening.set()

        def serving() -> None:
            serve(
                root / "server",
                job,
                initial=lambda _: template,
                port=0,
                wait_s=120,
                on_listen=listen,
            )

        server = threading.Thread(target=serving, daemon=True)
        server.start()
        if not listening.wait(60):
            raise SystemExit("the server did not start")

        def runner(name: str, _: JobConfig) -> SiteRunner:
            return SiteRunner(name, FixedUpdate(TRAIN_S))

        with proxies(("127.0.0.1", port["p"]), names, proxy_faults(fault)) as near:
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
            if fault == "partition":
                last = near[names[-1]].faults
                cut_after(root / "report" / "rounds.json", lambda on: setattr(last, "cut", on), names[-1], rounds)
            server.join(600)
            for t in threads:
                t.join(120)
        return list(json.loads((root / "report" / "rounds.json").read_text()))


def in_namespaces(fault: str, params: int, sites: int, rounds: int) -> list[dict[str, object]]:
    names = [f"site-{i + 1}" for i in range(sites)]
    with tempfile.TemporaryDirectory() as tmp, Netns(names) as net:
        if fault == "tbf":
            for name in names:
                net.shape(name, 10e6)

        def during(running: Running) -> None:
            last = names[-1]
            if fault == "partition":
                faults = running.proxies[last].faults
                cut_after(running.report / "rounds.json", lambda on: setattr(faults, "cut", on), last, rounds)
            elif fault == "link-down":
                cut_after(running.report / "rounds.json", lambda on: net.link(last, up=not on), last, rounds)

        outcome = run_job(
            net,
            Path(tmp),
            initial=model(params),
            sites={name: ["--fixed", "--train-s", str(TRAIN_S), "--give-up-s", "300"] for name in names},
            rounds=rounds,
            faults=proxy_faults(fault),
            federation=federation(fault, sites),
            during=during,
            limit_s=600,
        )
        if outcome.server_code != 0:
            raise SystemExit(f"the job in namespaces failed under {fault}:\n{outcome.logs}")
        return list(outcome.rounds)


def cut_after(
    rounds_file: Path, cut: Callable[[bool], None], site: str, total: int, *, after: int = 2, rounds: int = 3
) -> None:
    """``cut(True)`` once ``after`` rounds have closed; ``cut(False)`` once ``rounds`` more closed without ``site``,
    or the job's ``total`` rounds all closed, or 600 s passed."""

    def closed() -> list[dict[str, object]]:
        try:
            return json.loads(rounds_file.read_text()) if rounds_file.exists() else []
        except ValueError:
            return []

    def watch() -> None:
        deadline = time.monotonic() + 600
        while len(closed()) < after and time.monotonic() < deadline:
            time.sleep(0.02)
        cut(True)
        while time.monotonic() < deadline:
            now = closed()
            if sum(site not in r["sites"] for r in now) >= rounds or len(now) >= total:  # type: ignore[operator]
                break
            time.sleep(0.02)
        cut(False)

    threading.Thread(target=watch, daemon=True).start()


def netns_reason(mode: str, faults: list[str]) -> str | None:
    """Why the namespace rows are left out (None: they run)."""
    if mode == "off":
        return "left out (--netns off)"
    reason = unavailable()
    if reason is None and "tbf" in faults and (tbf := tbf_unavailable()) is not None:
        faults.remove("tbf")
        print(f"the tbf row is skipped: {tbf}")
    if reason is not None and mode == "on":
        raise SystemExit(f"--netns on, but network namespaces are unavailable: {reason}")
    return None if reason is None else f"skipped: network namespaces are unavailable here ({reason})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=250_000)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--faults", nargs="+", choices=FAULTS, default=FAULTS)
    parser.add_argument("--netns", choices=["auto", "on", "off"], default="auto")
    args = parser.parse_args()
    faults = ["none", *[f for f in args.faults if f != "none"]]  # the baseline of the ratios always runs
    print(
        f"{args.sites} sites through their own proxies, model of {args.params:,} float32 ({args.params * 4 / 1e6:.1f} "
        f"MB), {args.rounds} rounds, each site's local step {TRAIN_S} s"
    )
    netns_faults = list(faults)
    skipped = netns_reason(args.netns, netns_faults)
    plan: list[tuple[str, str, Callable[[str, int, int, int], list[dict[str, object]]]]] = [
        ("loopback", f, on_loopback) for f in faults if f not in NETNS_ONLY
    ]
    if skipped is None:
        plan += [("netns", f, in_namespaces) for f in netns_faults]
    print(
        f"{'network':<9} {'fault':<10} {'rounds done':>11} {'median round s':>15} {'vs loopback':>11} "
        f"{'vs netns':>9} {'slowest s':>10}  sites"
    )
    base: dict[str, float] = {}
    for network, fault, run in plan:
        try:
            rounds = run(fault, args.params, args.sites, args.rounds)
        except NetnsUnavailable as exc:
            print(f"{network:<9} {fault:<10} skipped: {exc}")
            continue
        times = [float(r["seconds"]) for r in rounds]  # type: ignore[arg-type]
        median = statistics.median(times)
        base.setdefault(network, median)
        versus = f"{median / base['netns']:>8.1f}x" if network == "netns" else f"{'':>9}"
        counts = "".join(str(len(r["sites"])) for r in rounds)  # type: ignore[arg-type]
        print(
            f"{network:<9} {fault:<10} {len(rounds):>11} {median:>15.3f} {median / base['loopback']:>10.1f}x "
            f"{versus} {max(times):>10.2f}  {counts}",
            flush=True,
        )
    if skipped is not None:
        print(f"netns rows {skipped}")


if __name__ == "__main__":
    main()
