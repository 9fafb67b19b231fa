"""Confide's command-line processes for the end-to-end tests: a free port, a started `confide` command, and the
outputs of a server and its sites once they have finished (killed whatever happens)."""

from __future__ import annotations

import socket
import subprocess
import sys

CLI = [sys.executable, "-m", "confide.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(*args: str) -> subprocess.Popen[str]:
    """``confide ARGS`` in a process of its own, its output (stdout and stderr) kept; no input (a site never waits
    on a question at the terminal the tests run in)."""
    return subprocess.Popen(
        [*CLI, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(
    server: subprocess.Popen[str],
    sites: list[subprocess.Popen[str]],
    *,
    server_s: float = 300,
    site_s: float = 120,
) -> tuple[str, list[str]]:
    """The server's output once it ends (within ``server_s``), then each site's (within ``site_s``); every process
    is killed afterwards, ended or not."""
    try:
        server_out, _ = server.communicate(timeout=server_s)
        return server_out, [s.communicate(timeout=site_s)[0] for s in sites]
    finally:
        for process in (server, *sites):
            process.kill()
