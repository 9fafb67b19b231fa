"""A live dashboard for one job: what it records, its web server, and the federation it follows.

``launch`` is what ``confide server --dashboard PORT`` and ``confide simulate --dashboard PORT`` use: the token
kept in the folder (the server kit, or the job's report folder), the address written beside it, the URL said."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from confide.config import JobConfig
from confide.dashboard.app import make_app
from confide.dashboard.files import TOKEN_FILE, ensure_token, url_for, write_place
from confide.dashboard.follow import Followed, SiteContacts
from confide.dashboard.serving import WebThread, bind
from confide.dashboard.snapshot import Mode, Snapshot, finite
from confide.dashboard.state import FederationState
from confide.dashboard.view import JobFacts, Source, build
from confide.dashboard.watch import watched
from confide.privacy.ledger import Ledger
from confide.transport.base import Transport

log = logging.getLogger(__name__)

REFRESH_S = 5.0
"""While sites are connected, a new snapshot at least this often (how long ago each was heard from)."""


def job_facts(job: JobConfig) -> JobFacts:
    budget = job.privacy.budget
    return JobFacts(
        name=job.name,
        rounds=job.federation.rounds,
        min_sites=job.federation.min_sites,
        budget=finite(budget.epsilon) if budget is not None else None,
        baselines=bool(job.compare),
        document=job.model_dump(mode="json"),
    )


class Dashboard:
    """The dashboard of ``job``, served on ``host:port`` (0: a free port) once started. It is a
    :class:`~confide.dashboard.follow.Watcher`: give it to the simulator or the deployment to follow."""

    def __init__(
        self,
        job: JobConfig,
        *,
        mode: Mode,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        poll_s: float = 0.25,
        keepalive_s: float = 15.0,
    ) -> None:
        self.mode: Mode = mode
        self.state = FederationState()
        self._facts = job_facts(job)
        self._source: Source | None = None
        self._follows = 0
        self._cache: tuple[Hashable, bytes] | None = None
        self._cache_lock = threading.Lock()
        self._failed = False
        self._stopping = threading.Event()
        app = make_app(self, token, self._stopping, poll_s=poll_s, keepalive_s=keepalive_s)
        self._web = WebThread(app, bind(host, port))
        self.host = host
        self.port = self._web.port
        self.url = url_for(host, self.port)

    def start(self) -> Dashboard:
        self._web.start()
        return self

    def close(self) -> None:
        self._stopping.set()  # event streams end, so the server stops without waiting on them
        self._web.stop()

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # -- Watcher ----------------------------------------------------------------------------------
    def follow(
        self,
        transport: Transport,
        contacts: SiteContacts | None = None,
        ledgers: Mapping[str, Ledger] | None = None,
    ) -> Followed:
        self._source = Source(transport, contacts, dict(ledgers) if ledgers is not None else None)
        self._follows += 1
        return Followed(watched(transport, self.state.saw_update, self.state.ended), self.state)

    def scored(self, round: int, metrics: Mapping[str, float]) -> None:
        self.state.scored(round, metrics)

    # -- Publisher --------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        return build(self.state.parts(), self._facts, self.mode, self._source)

    def change_key(self) -> Hashable:
        """Changes with every event recorded, whenever the sites connected change, and (while any is connected)
        every few seconds."""
        source = self._source
        try:
            connected = tuple(sorted(source.transport.sites())) if source is not None else ()
        except Exception:  # a transport closing under our feet: nobody is connected
            connected = ()
        tick = int(time.monotonic() // REFRESH_S) if connected else 0
        return (self.state.version, self._follows, connected, tick)

    def snapshot_json(self) -> bytes:
        """The snapshot as JSON, made once per change however many pages watch. Should making it fail, the last
        one made is served again (and the failure logged once)."""
        key = self.change_key()
        with self._cache_lock:
            if self._cache is None or self._cache[0] != key:
                try:
                    self._cache = (key, self.snapshot().model_dump_json().encode())
                except Exception:
                    if not self._failed:
                        self._failed = True
                        log.exception("the dashboard could not make a snapshot; it shows the last one made")
                    if self._cache is None:
                        raise
            return self._cache[1]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextmanager
def launch(
    folder: Path, job: JobConfig, *, mode: Mode, port: int | None, host: str, say: Callable[[str], None]
) -> Iterator[Dashboard | None]:
    """The job's dashboard while the block runs (``None`` without a ``port``): its token kept in
    ``folder/dashboard.token``, its address written to ``folder/dashboard.json``, its URL said."""
    if port is None:
        yield None
        return
    token = ensure_token(folder)
    with Dashboard(job, mode=mode, token=token, host=host, port=port) as dashboard:
        place = write_place(folder, host, dashboard.port)
        say(
            f"dashboard: {place.url} (read-only; its token is in {folder / TOKEN_FILE}: open "
            f"{place.url}?token=$(cat {folder / TOKEN_FILE}), or `confide status --kit {folder}`)"
        )
        if not is_loopback(host):
            say(
                f"warning: the dashboard listens on {host}, beyond this machine, over plain HTTP: its token "
                "crosses the network in clear (prefer 127.0.0.1 and an SSH tunnel)"
            )
        yield dashboard
