"""The server's trail: a timestamped log file in the job's report folder, for an auditor.

Everything Confide logs at INFO and above while the server runs goes to ``REPORT/server.log`` (appended to, so a
resumed job continues its trail): sites joining, rejoining and being refused (with peer address and certificate
serial), each round's participants, rejections with their reasons and timings, checkpoints, the job's end. Any text
that came from a site is already one bounded line (:mod:`confide.sanitize`) where it is logged, so a site cannot
forge lines here. The console keeps showing warnings only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TRAIL_NAME = "server.log"
FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"


def _utc_formatter() -> logging.Formatter:
    formatter = logging.Formatter(FORMAT, datefmt="%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime  # UTC: one clock for every site's operator
    return formatter


@contextmanager
def server_trail(folder: Path, *, level: int = logging.INFO) -> Iterator[Path]:
    """Log Confide's records at ``level`` and above to ``folder/server.log`` while the block runs."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TRAIL_NAME
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(_utc_formatter())
    logger = logging.getLogger("confide")
    before = logger.level
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)
        handler.close()
