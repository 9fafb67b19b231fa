"""Checkpoints written off the round's critical path: each round's on a thread of its own, while the next round
runs.

What the write reads must not change under it. The global model never does: every round's aggregate is a new
buffer, and the model it replaces is only read. The records (history, guard) are copied when the write is
handed over. A strategy's own arrays (server momentum, control variates) do change, at the end of the next round's
aggregation: the server loop waits for the write (:meth:`CheckpointWriter.wait`) once the round's updates are all
in, before the strategy folds them into its state. At most one write runs at a time; a write that fails stops the
job at the next round's end, naming the round and the folder, and the previous checkpoint stands (each write is
atomic, see :mod:`confide.server.checkpoint`).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from confide.errors import ConfideError
from confide.records import Arrays
from confide.server import checkpoint
from confide.strategies.base import StrategyState

log = logging.getLogger(__name__)


class CheckpointWriter:
    """One checkpoint write at a time, each on its own thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._thread: threading.Thread | None = None
        self._failed: str | None = None

    def submit(self, round: int, arrays: Arrays, state: dict[str, Any], strategy: StrategyState) -> None:
        """Write round ``round`` in the background, once the previous write is done."""
        self.wait()
        snapshot = json.loads(json.dumps(state))  # the loop's records go on changing; what is written must not
        kept = StrategyState(scalars=dict(strategy.scalars), arrays=strategy.arrays)
        self._thread = threading.Thread(
            target=self._write, args=(round, arrays, snapshot, kept), name=f"checkpoint-{round}", daemon=False
        )
        self._thread.start()

    def _write(self, round: int, arrays: Arrays, state: dict[str, Any], strategy: StrategyState) -> None:
        try:
            checkpoint.save(self.directory, round, arrays, state, strategy)
        except Exception as exc:  # surfaced by wait(), on the loop's thread
            self._failed = f"the checkpoint of round {round} could not be written to {self.directory}: {exc}"
            log.error("%s", self._failed)

    def wait(self) -> None:
        """Return once no write is running; raise if the last one failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise ConfideError(f"{failed}; the checkpoint of the round before stands")
