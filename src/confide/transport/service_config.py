"""The settings of the server's federation service (:class:`confide.transport.grpc_server.FederationService`)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from confide.errors import ConfigError

HEADER_ALLOWANCE = 1 << 20
"""Bytes a transfer may carry beyond its arrays (the serde header: scalars, metrics, filter history)."""


@dataclass
class ServiceConfig:
    job: Mapping[str, Any]
    heartbeat_s: float = 5.0
    site_timeout_s: float = 30.0
    poll_s: float = 5.0
    # The largest transfer taken. A deployment sets it from its model (FederationService.limit_transfers: twice
    # the encoded model plus HEADER_ALLOWANCE); a larger one is refused before anything is allocated for it.
    max_bytes: int = 4 * 1024**3
    # A receive buffer grown past this (by a transfer larger than the model) is let go once used; None: kept.
    keep_bytes: int | None = None
    # Updates received and held at once. Each needs one buffer of the update's size, so the server's memory is
    # the global model, the aggregate and this many updates, whatever the number of sites. A deployment sets it
    # from its model (FederationService.limit_transfers): as many as fit in receive_budget, one for a large model.
    max_inflight: int = 1
    receive_budget: int = 32 << 20  # bytes of receive buffers a small model's updates may hold at once
    max_sending: int = 2  # instructions streamed at once; the network is shared, so more would not be faster
    # The longest an upload waits for a receive buffer (or an instruction for a sending slot); then the site is
    # told to send again (or to pull again), instead of waiting behind a stalled site forever.
    queue_wait_s: float = 300.0
    idle_s: float = 30.0  # a stream that moves no frame for this long is dropped, and what it held is freed
    # A whole transfer must finish within transfer_floor_s + size / transfer_min_rate (bytes per second); it is
    # dropped as soon as it falls behind that pace, so a trickling site cannot hold a buffer for long either.
    transfer_floor_s: float = 60.0
    transfer_min_rate: float = 256 * 1024  # 2 Mbit/s: a 100 MB update may take 60 + 380 s
    pushes_per_site: int = 2  # streams one site (one certificate) may hold at once; more are refused at once
    pulls_per_site: int = 2
    # Transfers (pushes and pulls) open at once across every site: each costs a little memory (its stream's
    # flow-control window), none a thread (the service runs on one event loop). Raise it for a federation of more
    # than max_transfers / 2 sites: each site's long poll holds one.
    max_transfers: int = 1024
    revoked: Callable[[], Collection[int]] = field(default=lambda: frozenset())
    roster: Callable[[], Mapping[str, int] | None] = field(default=lambda: None)

    def __post_init__(self) -> None:
        positive = {
            "queue_wait_s": self.queue_wait_s,
            "idle_s": self.idle_s,
            "transfer_floor_s": self.transfer_floor_s,
            "transfer_min_rate": self.transfer_min_rate,
            "pushes_per_site": self.pushes_per_site,
            "pulls_per_site": self.pulls_per_site,
            "max_inflight": self.max_inflight,
            "max_sending": self.max_sending,
            "max_transfers": self.max_transfers,
            "receive_budget": self.receive_budget,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"ServiceConfig.{name} must be positive, got {value!r}")
