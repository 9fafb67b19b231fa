"""The simulator: N site runners and the server in one process, over the in-memory transport.

Everything still passes through :mod:`confide.serde`, so a job behaves here as in a real federation. For many
sites, :mod:`confide.sim_ray` runs the same server loop with the sites on a pool of Ray actors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from confide.privacy.filter import FilterChain
from confide.privacy.ledger import Ledger
from confide.records import Arrays
from confide.server.events import Fanout
from confide.server.loop import History, LoopConfig, RoundEvents, ServerLoop
from confide.sim_identities import SimFederation
from confide.site.runner import SiteRunner
from confide.strategies.base import Strategy
from confide.tasks.base import Task
from confide.transport.base import Transport
from confide.transport.inmemory import InMemoryTransport

if TYPE_CHECKING:
    from confide.dashboard.follow import Watcher


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
    federation: SimFederation | None = None,
    min_roster: int = 1,
    watch: Watcher | None = None,
) -> SimResult:
    """Run a whole federation of ``tasks`` (one per site) for ``config.rounds`` rounds. With ``config.secure``
    set, the rounds use secure aggregation and every site refuses to send an update in the clear.

    Under secure aggregation each site signs its keys and checks every roster as a deployed site does: with its
    identity in ``federation`` (by default an in-memory CA and one certificate per site, made here; a site it
    lacks has no identity and refuses) and at least ``min_roster`` verified sites in any aggregation. The server
    sends the federation's revocation list unless ``config.secure`` names one. ``watch`` (the live dashboard)
    follows the run: its events, the replies on the transport, the sites' ledgers."""
    if config.secure is not None:
        federation = federation or SimFederation.create(tasks)
        if not config.secure.revocation_list:
            config = replace(config, secure=replace(config.secure, revocation_list=federation.revocation_list))
    runners = {
        name: SiteRunner(
            name,
            task,
            chain=(chains or {}).get(name),
            ledger=(ledgers or {}).get(name),
            secure_aggregation=config.secure is not None,
            job=job,
            identity=federation.identities.get(name) if federation is not None else None,
            min_roster=min_roster,
        )
        for name, task in tasks.items()
    }
    transport = InMemoryTransport(runners)
    served: Transport = transport
    if watch is not None:
        own = {site: ledger for site, ledger in (ledgers or {}).items() if ledger is not None}
        followed = watch.follow(transport, transport, own)
        served, events = followed.transport, Fanout(events, followed.events)
    loop = ServerLoop(strategy, served, initial, config, events)
    try:
        history = loop.run()
    finally:
        served.close()  # a watching dashboard hears that the run is over, however it ended
    return SimResult(arrays=loop.global_arrays, history=history)
