"""The simulator: N site runners and the server in one process, over the in-memory transport.

Everything still passes through :mod:`confide.serde`, so a job behaves here as in a real federation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from confide.privacy.filter import FilterChain
from confide.privacy.ledger import Ledger
from confide.records import Arrays
from confide.server.loop import History, LoopConfig, RoundEvents, ServerLoop
from confide.site.runner import SiteRunner
from confide.strategies.base import Strategy
from confide.tasks.base import Task
from confide.transport.inmemory import InMemoryTransport


@dataclass(frozen=True)
class SimResult:
    arrays: Arrays
    history: History


def simulate(
    strategy: Strategy,
    tasks: Mapping[str, Task],
    initial: Arrays,
    config: LoopConfig,
    *,
    events: RoundEvents | None = None,
    chains: Mapping[str, FilterChain] | None = None,
    ledgers: Mapping[str, Ledger | None] | None = None,
    job: str = "",
) -> SimResult:
    """Run a whole federation of ``tasks`` (one per site) for ``config.rounds`` rounds. With ``config.secure``
    set, the rounds use secure aggregation and every site refuses to send an update in the clear."""
    runners = {
        name: SiteRunner(
            name,
            task,
            chain=(chains or {}).get(name),
            ledger=(ledgers or {}).get(name),
            secure_aggregation=config.secure is not None,
            job=job,
        )
        for name, task in tasks.items()
    }
    transport = InMemoryTransport(runners)
    loop = ServerLoop(strategy, transport, initial, config, events)
    history = loop.run()
    transport.close()
    return SimResult(arrays=loop.global_arrays, history=history)
