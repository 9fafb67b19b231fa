"""One site's round exactly as a deployment runs it, so that the audit attacks what a site really sends.

The site's task comes from the workload, its filters from :func:`confide.privacy.build.site_chain`, its ledger is a
:class:`~confide.privacy.ledger.Ledger`; a :class:`~confide.site.runner.SiteRunner` decodes a serialised
instruction, trains, filters, charges the ledger and encodes its answer, and the audit decodes those bytes as a
server would. Each round is a fresh site (a fresh ledger): every audited record takes part in one round only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from confide import serde
from confide.audit.settings import CONFIGS, AuditSettings
from confide.errors import ConfigError, PrivacyError
from confide.privacy.build import site_chain
from confide.privacy.config import PrivacyConfig
from confide.privacy.ledger import Ledger
from confide.privacy.spend import Spend
from confide.records import Arrays, Config, Failure, TrainIns, TrainRes, Update
from confide.site.runner import SiteRunner
from confide.workloads.base import Workload

SITE = "audited-site"


@dataclass(frozen=True)
class AuditConfig:
    """A privacy configuration under audit: its short name, a label for the report, and the site's privacy."""

    name: str
    label: str
    privacy: PrivacyConfig


def check_configs(settings: AuditSettings) -> None:
    """Refuse a configuration name the audit does not know (before any data is read)."""
    unknown = sorted(set(settings.configs) - set(CONFIGS))
    if unknown or not settings.configs:
        raise ConfigError(
            f"privacy configurations to audit must be some of {list(CONFIGS)}, got {list(settings.configs)}"
        )


def audit_configs(settings: AuditSettings, *, clip: float) -> list[AuditConfig]:
    """No privacy, the client-level Gaussian filter (clipping at ``clip``), DP-SGD and sparsification, those of
    ``settings.configs``. The site counts on no other site's noise (``min_contributors: 1``, what a site without a
    policy does): its update reaches the server as it left the site."""
    check_configs(settings)
    noise_multiplier, share = settings.noise_multiplier, settings.share
    dp_sgd_sigma, dp_sgd_clip = settings.dp_sgd_sigma, settings.dp_sgd_clip
    gaussian = {"type": "gaussian", "clip": clip, "noise_multiplier": noise_multiplier}
    every = [
        AuditConfig("none", "no privacy", PrivacyConfig(min_contributors=1)),
        AuditConfig(
            "gaussian",
            f"gaussian filter (z={noise_multiplier:g}, clip {clip:.3g})",
            PrivacyConfig.model_validate({"filters": [gaussian], "min_contributors": 1}),
        ),
        AuditConfig(
            "dp-sgd",
            f"DP-SGD (sigma={dp_sgd_sigma:g}, clip {dp_sgd_clip:g})",
            PrivacyConfig.model_validate(
                {"dp_sgd": {"noise_multiplier": dp_sgd_sigma, "clip": dp_sgd_clip}, "min_contributors": 1}
            ),
        ),
        AuditConfig(
            "sparsify",
            f"sparsify (top {share:.0%}, not DP)",
            PrivacyConfig.model_validate({"filters": [{"type": "sparsify", "fraction": share}], "min_contributors": 1}),
        ),
    ]
    return [config for config in every if config.name in settings.configs]


@dataclass(frozen=True)
class Released:
    """What left the site, decoded, and what the round cost by the site's own accounting."""

    update: Update
    meta: Mapping[str, Any]
    ledger_epsilon: float  # the site's ledger after the round; inf when nothing in its privacy spends any
    record_epsilon: float  # the upper bound that holds for adding or removing one record of its data


def record_spends(spends: Sequence[Spend]) -> list[Spend]:
    """The spends as they bound one *record* of the site's data. DP-SGD's already do. The client-level Gaussian
    filter's bound the site's whole update (sensitivity: the clip S); one record changed inside the site's data can
    move the clipped update by up to 2 S, the sensitivity of a noise multiplier half as large."""
    return [
        replace(s, noise_multiplier=s.noise_multiplier / 2)
        if s.is_gaussian and s.mechanism.startswith("gaussian")
        else s
        for s in spends
    ]


def release_once(
    workload: Workload,
    train: Any,
    audit: AuditConfig,
    *,
    initial: Arrays,
    config: Config,
    seed: int,
    round: int = 1,
    delta: float = 1e-5,
) -> Released:
    """Run one round at a fresh site that holds the training split ``train`` under ``audit``'s privacy."""
    privacy = audit.privacy
    task = workload.task(train, None, site=SITE, seed=seed, dp_sgd=privacy.dp_sgd)
    chain = site_chain(privacy)
    ledger = Ledger(site=SITE, delta=delta) if privacy.spends else None
    runner = SiteRunner(SITE, task, chain=chain, ledger=ledger)
    instruction = TrainIns(round=round, arrays=initial, config=config)
    spends = runner.spends(instruction)  # what the runner itself charges for this round
    answer = serde.decode(runner.handle(serde.encode(instruction)))
    if isinstance(answer, Failure):
        raise PrivacyError(f"the audited site ({audit.label}) sent no update: {answer.reason}")
    if not isinstance(answer, TrainRes):
        raise PrivacyError(f"the audited site answered a {type(answer).__name__}, not an update")
    if ledger is None:
        return Released(answer.update, dict(answer.meta), math.inf, math.inf)
    record = Ledger(site=SITE, delta=delta).after(record_spends(spends))
    return Released(answer.update, dict(answer.meta), ledger.epsilon, record)
