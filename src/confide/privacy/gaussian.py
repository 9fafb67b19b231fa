"""Client-level differential privacy (DP-FedAvg, McMahan et al. 2018): clip each site's update to L2 norm S and
add Gaussian noise with standard deviation z * S to the sum of the round's updates.

Two placements:

- ``site`` (distributed): each site adds N(0, (z S)^2 / m) to its own clipped update, where m is the fewest
  contributors its own policy counts on (``min_contributors``), so a sum of m updates carries the full
  N(0, (z S)^2) without trusting the server with any update. What each site is protected by depends on what the
  server sees: without secure aggregation, its update on its own, noise multiplier z / sqrt(m); under secure
  aggregation, a sum of at least k masked updates (k the aggregation's threshold: no smaller sum can be unmasked),
  noise multiplier z sqrt(min(k, m) / m). The ledger records the one that holds.
- ``server`` (central, only where the site's policy trusts the server): sites only clip; the server adds
  N(0, (z S)^2) to the sum (see :mod:`confide.strategies.dp_fedavg`). The site's ledger records multiplier z.

Integer arrays (counters such as BatchNorm's ``num_batches_tracked``) cannot carry Gaussian noise: they are left
out of the update (sent as no change) and of its norm. Nothing of the update's own (its norm before clipping)
is reported.

Either way the server averages with equal weights (the sensitivity of the sum is S, whatever a site's size).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

import numpy as np

from confide.privacy.spend import Spend
from confide.records import Arrays, SparseArrays, TrainRes

Placement = Literal["site", "server"]


def l2_norm(update: Arrays) -> float:
    return math.sqrt(sum(float(np.vdot(v.ravel(), v.ravel())) for v in update.values()))


def float_part(update: Arrays) -> Arrays:
    """The update with every non-floating array set to zero (no change): noise cannot be added to integers."""
    return Arrays.from_dict(
        {n: (v if np.issubdtype(v.dtype, np.floating) else np.zeros_like(v)) for n, v in update.items()}
    )


def clip_to_norm(update: Arrays, clip: float) -> tuple[Arrays, float]:
    """The update scaled down to L2 norm at most ``clip``, and its norm before."""
    norm = l2_norm(update)
    if not math.isfinite(norm):
        raise ValueError("the update holds NaN or infinite values")
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    return Arrays.from_dict({n: (v * v.dtype.type(factor)) for n, v in update.items()}), norm


class GaussianClientDP:
    """Clip the site's update to norm ``clip``; at ``placement="site"`` also add its share of the noise."""

    name = "gaussian"
    spends_privacy = True

    def __init__(
        self,
        clip: float,
        noise_multiplier: float,
        *,
        sites: int,
        placement: Placement = "site",
        secure_aggregation: bool = False,
    ) -> None:
        if not (isinstance(clip, int | float) and math.isfinite(clip) and clip > 0):
            raise ValueError(f"gaussian: clip must be a finite number > 0, got {clip!r}")
        if not (isinstance(noise_multiplier, int | float) and math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise ValueError(f"gaussian: noise_multiplier must be a finite number > 0, got {noise_multiplier!r}")
        if isinstance(sites, bool) or not isinstance(sites, int) or sites < 1:
            raise ValueError(
                f"gaussian: sites (the fewest contributors to a sum) must be a whole number >= 1, got {sites!r}"
            )
        if placement not in ("site", "server"):
            raise ValueError(f"gaussian: placement must be 'site' or 'server', got {placement!r}")
        self.clip = float(clip)
        self.noise_multiplier = float(noise_multiplier)
        self.sites = sites
        self.placement = placement
        self.secure_aggregation = secure_aggregation

    @property
    def own_std(self) -> float:
        """The standard deviation of the noise this site adds to each entry."""
        return self.noise_multiplier * self.clip / math.sqrt(self.sites) if self.placement == "site" else 0.0

    def effective_multiplier(self, contributors: int | None = None) -> float:
        """The noise multiplier that protects this site against what the server sees. ``contributors``: under secure
        aggregation, the fewest masked updates any sum the server can unmask holds (unknown counts as one)."""
        if self.placement == "server":
            return self.noise_multiplier
        if self.secure_aggregation:
            k = min(max(1, contributors or 1), self.sites)
            return self.noise_multiplier * math.sqrt(k / self.sites)
        return self.noise_multiplier / math.sqrt(self.sites)

    def spend(self, contributors: int | None = None) -> Spend:
        params: dict[str, float | int | str] = {
            "clip": self.clip,
            "z": self.noise_multiplier,
            "placement": self.placement,
            "sites": self.sites,
            "secure_aggregation": str(self.secure_aggregation).lower(),
        }
        if self.secure_aggregation and self.placement == "site":
            params["contributors"] = int(contributors or 1)
        multiplier = self.effective_multiplier(contributors)
        return Spend(f"gaussian-{self.placement}", params, noise_multiplier=multiplier, steps=1)

    def apply(self, res: TrainRes, rng: np.random.Generator) -> TrainRes:
        if isinstance(res.update, SparseArrays):
            raise ValueError("gaussian: the update is sparse; noise must come before any sparsification")
        clipped, _ = clip_to_norm(float_part(res.update), self.clip)
        if self.placement == "site":
            std = self.own_std
            clipped = Arrays.from_dict(
                {
                    n: (v + rng.normal(0.0, std, size=v.shape).astype(v.dtype))
                    if np.issubdtype(v.dtype, np.floating)
                    else v
                    for n, v in clipped.items()
                }
            )
        meta = {**res.meta, "dp_clip": self.clip, "dp_noise_std": self.own_std}
        return replace(res, update=clipped, meta=meta)
