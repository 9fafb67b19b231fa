"""Strategies: how the server turns sites' updates into the next global model."""

from __future__ import annotations

from confide.privacy.config import PrivacyConfig
from confide.strategies.base import Aggregate, Strategy
from confide.strategies.cyclic import Cyclic
from confide.strategies.dp_fedavg import DPFedAvg
from confide.strategies.fedavg import FedAvg
from confide.strategies.fedbn import FedBN
from confide.strategies.fedopt import FedOpt, Variant, server_lr_for
from confide.strategies.fedprox import FedProx
from confide.strategies.robust import RobustAggregation, fed_median, fed_trimmed_mean
from confide.strategies.scaffold import Scaffold

__all__ = [
    "Aggregate",
    "Cyclic",
    "DPFedAvg",
    "FedAvg",
    "FedBN",
    "FedOpt",
    "FedProx",
    "RobustAggregation",
    "Scaffold",
    "Strategy",
    "fed_median",
    "fed_trimmed_mean",
    "make_strategy",
]

FEDOPT: dict[str, Variant] = {"fedadam": "adam", "fedyogi": "yogi", "fedadagrad": "adagrad"}


def make_strategy(
    name: str,
    train_config: dict[str, float | int],
    *,
    trim_fraction: float = 0.2,
    server_lr: float | None = None,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
    mu: float = 0.01,
    privacy: PrivacyConfig | None = None,
    seed: int = 0,
    total_sites: int = 1,
    norm_names: frozenset[str] = frozenset(),
) -> Strategy:
    """The strategy a job names, with the instruction every site receives. A job with client-level DP (a
    gaussian filter) aggregates with DP-FedAvg: equal weights, and the noise added here when it is central.
    ``server_lr``, ``beta1``, ``beta2`` and ``tau`` are the server optimiser's (fedadam, fedyogi, fedadagrad;
    ``server_lr`` None: the variant's own default);
    ``mu`` is FedProx's proximal strength, sent to the sites; ``total_sites`` is SCAFFOLD's N (its control variate
    moves by the sum of this round's control changes over N); ``norm_names`` are the arrays FedBN keeps at the
    sites."""
    privacy = privacy or PrivacyConfig()
    dp = privacy.gaussian
    if dp is not None:
        if name != "fedavg":
            raise ValueError(f"client-level DP averages with DP-FedAvg; strategy {name!r} cannot carry it")
        return DPFedAvg(train_config, clip=dp.clip, noise_multiplier=dp.noise_multiplier, placement=dp.placement)
    if name == "fedavg":
        return FedAvg(train_config, missing=privacy.missing)
    if name in FEDOPT:
        return FedOpt(
            train_config,
            variant=FEDOPT[name],
            server_lr=server_lr_for(name, server_lr),
            beta1=beta1,
            beta2=beta2,
            tau=tau,
            missing=privacy.missing,
        )
    if name == "fedprox":
        return FedProx(train_config, mu=mu, missing=privacy.missing)
    if name == "scaffold":
        return Scaffold(train_config, total_sites=total_sites)
    if name == "fedbn":
        return FedBN(train_config, local_names=norm_names, missing=privacy.missing)
    if name == "cyclic":
        return Cyclic(train_config)
    if name == "median":
        return fed_median(train_config)
    if name == "trimmed_mean":
        return fed_trimmed_mean(train_config, trim_fraction=trim_fraction)
    raise ValueError(f"unknown strategy {name!r}")
