"""How big an audit is: the quick (CI-sized) and full presets, and the privacy configurations it attacks."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from confide.privacy.audit_inversion import InversionSettings

CONFIGS = ("none", "gaussian", "dp-sgd", "sparsify")


@dataclass(frozen=True)
class ImageSettings:
    """The image audit: a mammography CNN (``width`` channels, ``blocks`` blocks, GroupNorm so that DP-SGD can
    train it) on images of ``image_size``; each trial trains a site on one image for ``steps`` Adam steps at
    ``lr``. Identification: ``trials`` trials, each among ``candidates`` images. Inversion: on the first
    ``inversions`` trials, with the attacker's ``public`` images (generated ones without ``--data``)."""

    image_size: int = 16
    width: int = 16
    blocks: int = 1
    lr: float = 1e-3
    steps: int = 1
    public: int = 64
    candidates: int = 8
    trials: int = 24
    inversions: int = 4
    inversion: InversionSettings = field(default_factory=lambda: InversionSettings(iterations=60))


@dataclass(frozen=True)
class TableSettings:
    """The table audit: ``rounds`` independent site rounds (``steps`` Adam steps at ``lr``, batches of ``batch``),
    each with ``canaries`` fresh canaries (default: one per feature, two for the MLP) planted ``canary_scale``
    standard deviations out; generated tables have ``rows`` rows of ``features`` features."""

    rows: int = 300
    features: int = 8
    model: Literal["linear", "mlp"] = "linear"
    hidden: int = 16
    rounds: int = 24
    steps: int = 50
    batch: int = 32
    lr: float = 0.05
    canaries: int | None = None
    canary_scale: float = 100.0
    guess_counts: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)


@dataclass(frozen=True)
class AuditSettings:
    """Everything an audit needs. The experiment's randomness (data, candidates, canaries, which are included) is
    seeded from ``seed``; the sites' privacy noise is not (it comes from the OS CSPRNG, as in any job)."""

    seed: int = 0
    delta: float = 1e-5
    confidence: float = 0.95
    noise_multiplier: float = 1.0  # the client-level gaussian filter's z
    table_clip: float = 0.5  # its clip on the table task (the image task's follows the size of an Adam step)
    dp_sgd_sigma: float = 1.0
    dp_sgd_clip: float = 1.0
    share: float = 0.1  # sparsify: the share of entries sent
    configs: tuple[str, ...] = CONFIGS  # which of them to audit
    image: ImageSettings = field(default_factory=ImageSettings)
    table: TableSettings = field(default_factory=TableSettings)


def quick(seed: int = 0) -> AuditSettings:
    """CI-sized: seconds per configuration on two CPU cores."""
    return AuditSettings(seed=seed)


def full(seed: int = 0) -> AuditSettings:
    """Larger samples (tighter bounds, steadier metrics): minutes on a CPU."""
    image = ImageSettings(
        public=256, candidates=16, trials=100, inversions=8, inversion=InversionSettings(iterations=200)
    )
    return replace(AuditSettings(seed=seed), image=image, table=TableSettings(rounds=100))
