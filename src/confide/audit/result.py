"""What an audit found: one row per privacy configuration, and the check that no lower bound beats the ledger."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from confide.privacy.audit_bounds import violation


class AuditProgress(Protocol):
    """Where the audit reports its progress (:class:`confide.report.progress.ProgressDisplay` fits)."""

    def phase(self, description: str, total: int | None) -> None: ...

    def advance(self, steps: int = 1, status: str | None = None) -> None: ...


class Silent:
    """Progress that goes nowhere."""

    def phase(self, description: str, total: int | None) -> None:
        return None

    def advance(self, steps: int = 1, status: str | None = None) -> None:
        return None


@dataclass(frozen=True)
class AuditRow:
    """One privacy configuration under attack.

    ``ledger_epsilon``: what the site's ledger recorded for the round (infinite: nothing in it is DP).
    ``record_epsilon``: the upper bound for one record (one image, one row), the one the attack's lower bound is
    held to. ``lower_epsilon``: the epsilon the attack proves, at the audit's confidence. ``metrics``: the
    attack's own numbers (PSNR, SSIM, identification success, AUC ...)."""

    config: str
    label: str
    ledger_epsilon: float
    record_epsilon: float
    lower_epsilon: float
    attack: str
    metrics: Mapping[str, float]
    summary: str

    @property
    def violation(self) -> str | None:
        return violation(self.label, self.lower_epsilon, self.record_epsilon)

    def document(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "label": self.label,
            "ledger_epsilon": _finite(self.ledger_epsilon),
            "record_epsilon": _finite(self.record_epsilon),
            "lower_epsilon": _finite(self.lower_epsilon),
            "attack": self.attack,
            "metrics": {k: _finite(v) for k, v in self.metrics.items()},
            "summary": self.summary,
            "violation": self.violation,
        }


@dataclass(frozen=True)
class Pictures:
    """For the figure of an image audit: the true image and each configuration's reconstruction."""

    truth: np.ndarray
    reconstructions: Mapping[str, np.ndarray]
    prior: np.ndarray | None = None


@dataclass(frozen=True)
class AuditResult:
    task: str
    description: str
    rows: tuple[AuditRow, ...]
    notes: tuple[str, ...]
    settings: Mapping[str, Any]
    seconds: float
    baselines: Mapping[str, float] = field(default_factory=dict)
    pictures: Pictures | None = None

    @property
    def violations(self) -> list[str]:
        """Every row whose lower bound exceeds its upper bound: each one is a bug."""
        return [v for v in (row.violation for row in self.rows) if v is not None]

    def document(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "description": self.description,
            "rows": [row.document() for row in self.rows],
            "baselines": {k: _finite(v) for k, v in self.baselines.items()},
            "notes": list(self.notes),
            "settings": dict(self.settings),
            "seconds": self.seconds,
            "violations": self.violations,
        }


def _finite(value: float) -> float | str | None:
    """JSON has no infinity or NaN: infinity is written "inf", NaN null."""
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)
