"""Server and sites on separate addresses: Linux network namespaces joined by veth pairs, for deployment tests and
benches over a real (if local) network.

    root namespace                       (the fault proxy, tests/network/proxy.py, listens on the bridge)
      cf<pid>sv  10.a.b.1/30  <-veth->  confide-<pid>-server: eth0 10.a.b.2/30   (the server listens here)
      cf<pid>br  10.a.b.129/25 (bridge)
        cf<pid>s0  <-veth->  confide-<pid>-site-1: eth0 10.a.b.130/25
        cf<pid>s1  <-veth->  confide-<pid>-site-2: eth0 10.a.b.131/25 ...

A site reaches only the bridge's address (:attr:`Netns.dial_host`), where the proxy listens; it has no route to the
server's namespace and the root namespace forwards nothing, so every byte between a site and the server crosses the
proxy. The kit names :attr:`dial_host` as the server's address, so the server's certificate names the address the
sites dial and TLS is checked as in a real deployment. Each site's link can be shaped by the kernel (``tc ... tbf``,
both directions: :meth:`Netns.shape`) or taken down (:meth:`Netns.link`: a partition that drops every packet).

    with Netns(["site-1", "site-2"]) as net:
        server = net.start(net.server_ns, ["python", ...], log=path)

Names carry this process's id, and the subnet is one no route of the machine uses, so runs side by side do not
meet. Everything made (processes, namespaces, links) goes when the block ends, on failure and on Ctrl-C too;
namespaces left by a run that was killed outright are swept when the next one starts. Where namespaces cannot be
made (not root, no ``ip``, unshare denied), entering raises :class:`NetnsUnavailable` naming the command that failed
and what it said.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[2]
PREFIX = "confide-"
_STALE = re.compile(rf"^{PREFIX}(\d+)-")


class NetnsUnavailable(RuntimeError):
    """Namespaces cannot be made on this machine; the message says which command failed and what it said."""


class CommandFailed(RuntimeError):
    def __init__(self, argv: Sequence[str], code: int, stderr: str) -> None:
        self.argv, self.code, self.stderr = list(argv), code, stderr.strip()
        super().__init__(f"`{' '.join(self.argv)}` exited with {code}: {self.stderr or '(no output)'}")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a short command (ip, tc) and wait for it; raise :class:`CommandFailed` with its stderr if it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CommandFailed(argv, -1, str(exc)) from None
    if check and done.returncode != 0:
        raise CommandFailed(argv, done.returncode, done.stderr)
    return done


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (a sentence to skip with), or None where they can."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux's; this is {sys.platform}"
    if os.geteuid() != 0:
        return f"network namespaces need root; running as uid {os.geteuid()}"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) on PATH"
    probe, pair = f"{PREFIX}{os.getpid()}-probe", f"cf{os.getpid()}pa"
    try:
        run("ip", "netns", "add", probe)
    except CommandFailed as exc:
        return f"cannot make a network namespace: {exc}"
    try:
        run("ip", "link", "add", pair, "type", "veth", "peer", "name", "eth0", "netns", probe)
        run("ip", "-n", probe, "link", "set", "eth0", "up")
    except CommandFailed as exc:
        return f"cannot join network namespaces with a veth pair: {exc}"
    finally:
        run("ip", "link", "del", pair, check=False)  # both ends at once (a namespace's links go after a while)
        run("ip", "netns", "del", probe, check=False)
    return None


def tbf_unavailable() -> str | None:
    """Why the kernel cannot shape a link with ``tc ... tbf`` here, or None (checked on a throwaway namespace)."""
    if shutil.which("tc") is None:
        return "no `tc` command (iproute2) on PATH"
    probe = f"{PREFIX}{os.getpid()}-tbf"
    try:
        run("ip", "netns", "add", probe)
        run("ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", *_tbf(10e6))
    except CommandFailed as exc:
        return f"cannot shape a link with tbf: {exc}"
    finally:
        run("ip", "netns", "del", probe, check=False)
    return None


def _tbf(rate: float) -> list[str]:
    """tbf's arguments for ``rate`` bytes per second: a burst of 64 kB (above rate / HZ for any HZ up to 1000 at
    rates up to 64 MB/s) and at most 100 ms of queue."""
    return ["rate", f"{int(rate * 8)}bit", "burst", "64kb", "latency", "100ms"]


def _used_networks() -> list[ipaddress.IPv4Network]:
    found = []
    for line in run("ip", "-4", "-o", "route", "show", "table", "all").stdout.splitlines():
        words = line.split()
        if words and words[0] in ("local", "broadcast", "unicast", "multicast", "anycast", "blackhole"):
            words = words[1:]
        if words and words[0] != "default":
            try:
                found.append(ipaddress.IPv4Network(words[0], strict=False))
            except ValueError:
                continue
    return found


def free_subnet(seed: int) -> ipaddress.IPv4Network:
    """A /24 in 10.128.0.0/9 that no route of this machine touches, the first tried picked by ``seed``."""
    used = _used_networks()
    for step in range(1 << 15):
        index = (seed + step) % (1 << 15)
        net = ipaddress.IPv4Network(f"10.{128 + (index >> 8)}.{index & 255}.0/24")
        if not any(net.overlaps(other) for other in used):
            return net
    raise NetnsUnavailable("no free /24 in 10.128.0.0/9 for the harness's links")


def sweep_stale() -> list[str]:
    """Delete namespaces this harness made in runs whose process is gone (killed outright); return their names."""
    swept = []
    listed = run("ip", "netns", "list", check=False).stdout
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _STALE.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            run("ip", "netns", "del", name, check=False)
            swept.append(name)
    for line in run("ip", "-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        match = re.match(r"^\d+: cf(\d+)br[:@]", line)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            run("ip", "link", "del", f"cf{match.group(1)}br", check=False)
            swept.append(f"cf{match.group(1)}br")
    return swept


@dataclass
class Process:
    """A command started in a namespace, in a session of its own; its output (stdout and stderr) in ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def last_line(self) -> str:
        lines = [line for line in self.output().splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def tail(self, lines: int = 25) -> str:
        return f"--- {self.name} (exit {self.popen.poll()}) ---\n" + "\n".join(self.output().splitlines()[-lines:])

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM to its whole session, then SIGKILL if it is still there after ``grace_s``."""
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            if self.popen.poll() is not None:
                return
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue


class Netns:
    """A namespace for the server and one per site, linked through the root namespace (see the module's text)."""

    def __init__(self, sites: Sequence[str]) -> None:
        if not 1 <= len(sites) <= 100:
            raise ValueError(f"sites: expected 1 to 100 names, got {len(sites)}")
        self.sites = list(sites)
        self.tag = str(os.getpid())  # one harness at a time in a process
        self.server_ns = f"{PREFIX}{self.tag}-server"
        self.site_ns = {name: f"{PREFIX}{self.tag}-{name}" for name in self.sites}
        self.bridge = f"cf{self.tag}br"
        self.server_link = f"cf{self.tag}sv"
        self.site_link = {name: f"cf{self.tag}s{i}" for i, name in enumerate(self.sites)}
        self.subnet: ipaddress.IPv4Network | None = None
        self.processes: list[Process] = []
        self._made: list[tuple[str, ...]] = []  # the commands that undo what was made, newest last
        self._lock = threading.Lock()
        self._closed = True
        self._own_term = False  # whether this harness put in the SIGTERM handler

    # addresses -----------------------------------------------------------------------------------------------

    def _address(self, offset: int) -> str:
        assert self.subnet is not None, "the namespaces are made on entering the block"
        return str(self.subnet.network_address + offset)

    @property
    def server_address(self) -> str:
        """Where the server listens, in its namespace; reachable from the root namespace only."""
        return self._address(2)

    @property
    def root_address(self) -> str:
        """The root namespace's end of the server's link: where the server sees the proxy's connections come from."""
        return self._address(1)

    @property
    def dial_host(self) -> str:
        """The root namespace's address on the sites' bridge: where the proxy listens and every site dials."""
        return self._address(129)

    def site_address(self, site: str) -> str:
        return self._address(130 + self.sites.index(site))

    # making and unmaking ---------------------------------------------------------------------------------------

    def __enter__(self) -> Netns:
        reason = unavailable()
        if reason is not None:
            raise NetnsUnavailable(reason)
        sweep_stale()
        self._closed = False
        atexit.register(self.close)
        if _main() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # SIGTERM unwinds the block as Ctrl-C does
            signal.signal(signal.SIGTERM, _terminate)
            self._own_term = True
        try:
            self.subnet = free_subnet(os.getpid())
            self._make()
        except CommandFailed as exc:
            self.close()
            raise NetnsUnavailable(f"setting up the namespaces failed: {exc}") from None
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _do(self, *argv: str, undo: tuple[str, ...] | None = None) -> None:
        run(*argv)
        if undo is not None:
            self._made.append(undo)

    def _make(self) -> None:
        self._do("ip", "netns", "add", self.server_ns, undo=("ip", "netns", "del", self.server_ns))
        self._do("ip", "-n", self.server_ns, "link", "set", "lo", "up")
        self._pair(self.server_link, self.server_ns)
        self._do("ip", "addr", "add", f"{self.root_address}/30", "dev", self.server_link)
        self._do("ip", "link", "set", self.server_link, "up")
        self._do("ip", "-n", self.server_ns, "addr", "add", f"{self.server_address}/30", "dev", "eth0")
        self._do("ip", "-n", self.server_ns, "link", "set", "eth0", "up")
        self._do("ip", "link", "add", self.bridge, "type", "bridge", undo=("ip", "link", "del", self.bridge))
        self._do("ip", "addr", "add", f"{self.dial_host}/25", "dev", self.bridge)
        self._do("ip", "link", "set", self.bridge, "up")
        for site in self.sites:
            ns, link = self.site_ns[site], self.site_link[site]
            self._do("ip", "netns", "add", ns, undo=("ip", "netns", "del", ns))
            self._do("ip", "-n", ns, "link", "set", "lo", "up")
            self._pair(link, ns)
            self._do("ip", "link", "set", link, "master", self.bridge)
            self._do("ip", "link", "set", link, "up")
            self._do("ip", "-n", ns, "addr", "add", f"{self.site_address(site)}/25", "dev", "eth0")
            self._do("ip", "-n", ns, "link", "set", "eth0", "up")

    def _pair(self, link: str, ns: str) -> None:
        """A veth pair: ``link`` in the root namespace, ``eth0`` in ``ns``. Deleting one end deletes both at once;
        deleting the namespace would too, but some time later."""
        self._do("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._made.append(("ip", "link", "del", link))

    def close(self) -> None:
        """Stop every process started, then undo what was made, newest first. Safe to call more than once; a
        Ctrl-C while it runs is held back until it is done."""
        with self._lock, _interrupts_held():
            if self._closed:
                return
            self._closed = True
            try:
                for process in reversed(self.processes):
                    process.stop()
                while self._made:
                    run(*self._made.pop(), check=False)
            finally:
                if self._own_term and _main():
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    self._own_term = False
                atexit.unregister(self.close)

    def left_behind(self) -> list[str]:
        """This harness's namespaces and links that still exist (none once the block has ended)."""
        namespaces = run("ip", "netns", "list", check=False).stdout.split()
        links = run("ip", "-o", "link", "show", check=False).stdout
        ours = [self.server_ns, *self.site_ns.values()]
        gone = [ns for ns in ours if ns in namespaces]
        ifaces = [self.bridge, self.server_link, *self.site_link.values()]
        return gone + [name for name in ifaces if re.search(rf"^\d+: {name}[:@]", links, re.MULTILINE)]

    # using them ------------------------------------------------------------------------------------------------

    def start(self, ns: str, argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None) -> Process:
        """Start ``argv`` in namespace ``ns`` (``ip netns exec``), in the repository's root with the repository on
        PYTHONPATH, output to ``log``. It is stopped when the block ends, if it has not ended by then."""
        if self._closed:
            raise RuntimeError("start() needs the namespaces: use it inside `with Netns(...)`")
        environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=environment,
                start_new_session=True,  # a Ctrl-C at the terminal reaches the harness, which stops it
            )
        process = Process(ns, popen, log)
        self.processes.append(process)
        return process

    def exec(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a short command in namespace ``ns`` and wait for it."""
        return run("ip", "netns", "exec", ns, *argv, check=check)

    def shape(self, site: str, rate: float | None) -> None:
        """Limit ``site``'s link to ``rate`` bytes per second each way with the kernel's token bucket (tbf on the
        egress of both ends of its veth pair); ``None`` lifts the limit."""
        ends: list[tuple[tuple[str, ...], str]] = [
            ((), self.site_link[site]),  # towards the site, in the root namespace
            (("ip", "netns", "exec", self.site_ns[site]), "eth0"),  # from the site, in its namespace
        ]
        for prefix, device in ends:
            if rate is None:
                run(*prefix, "tc", "qdisc", "del", "dev", device, "root", check=False)
            else:
                run(*prefix, "tc", "qdisc", "replace", "dev", device, "root", "tbf", *_tbf(rate))

    def shaped_bytes(self, site: str) -> dict[str, int]:
        """What tbf on ``site``'s link has sent each way so far, and how often it held a packet back."""
        down = run("tc", "-s", "qdisc", "show", "dev", self.site_link[site]).stdout
        up = self.exec(self.site_ns[site], "tc", "-s", "qdisc", "show", "dev", "eth0").stdout
        return {
            "down": _stat(down, r"Sent (\d+) bytes"),
            "up": _stat(up, r"Sent (\d+) bytes"),
            "overlimits": _stat(down, r"overlimits (\d+)") + _stat(up, r"overlimits (\d+)"),
        }

    def link(self, site: str, up: bool) -> None:
        """Take ``site``'s link down (every packet either way dropped, no reset sent: a partition) or up again."""
        run("ip", "link", "set", "dev", self.site_link[site], "up" if up else "down")


def _stat(text: str, pattern: str) -> int:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else 0


def _main() -> bool:
    return threading.current_thread() is threading.main_thread()


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Ctrl-C held back while the block runs (Python handles signals in the main thread only), raised after it."""
    if not _main():
        yield
        return
    caught: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old if old is not None else signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


def wait_for(condition: Callable[[], object], limit_s: float, what: str, *, every_s: float = 0.05) -> None:
    """Wait until ``condition()`` is true, for at most ``limit_s``; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {limit_s:.0f} s")
        time.sleep(every_s)
