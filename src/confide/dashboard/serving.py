"""The dashboard's web server: uvicorn on a thread of its own, on a socket bound before it starts (so a taken
port is a clear error at once, and port 0 gets a free one), waited on until it listens, stopped cleanly."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from starlette.types import ASGIApp

from confide.errors import ConfigError

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6, as the host is written)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--dashboard must be a port number (0 to 65535; 0: any free port), got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--dashboard-host {host!r} is not an address this machine can listen on: {exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"the dashboard cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


class WebThread:
    """``app`` served on ``sock`` by uvicorn, in a daemon thread named "confide-dashboard"."""

    def __init__(self, app: ASGIApp, sock: socket.socket) -> None:
        self.sock = sock
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            app,
            log_config=None,  # leave the process's logging as it is
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="confide-dashboard", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # reported by start(), or logged: the job goes on without its dashboard
            self.error = exc
            log.exception("the dashboard's web server stopped")

    def start(self, timeout_s: float = 60.0) -> None:
        """Serve; return once the server takes connections (or raise, saying why it did not)."""
        self.thread.start()
        end = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise ConfigError(f"the dashboard's web server did not start: {self.error!r}")
            if time.monotonic() > end:
                self.stop()
                raise ConfigError(f"the dashboard's web server did not start within {timeout_s:.0f} s")
            time.sleep(0.02)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ask the server to stop; return once it has (or ``timeout_s`` passed: a daemon thread then dies with
        the process)."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout_s)
            if self.thread.is_alive():
                log.warning("the dashboard's web server did not stop within %.0f s", timeout_s)
        self.sock.close()
