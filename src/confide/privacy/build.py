"""From a privacy configuration to what runs: each site's filter chain and ledger, and the server's strategy."""

from __future__ import annotations

from pathlib import Path

from confide.privacy.config import GaussianSpec, PrivacyConfig, SparsifySpec, SvtSpec
from confide.privacy.filter import Filter, FilterChain
from confide.privacy.gaussian import GaussianClientDP
from confide.privacy.ledger import Ledger
from confide.privacy.sparsify import Sparsify


def site_chain(privacy: PrivacyConfig, sites: int | None = None) -> FilterChain:
    """The filters a site runs on its update, in the configured order. Distributed noise is shared among
    ``privacy.min_contributors`` sites (the site's policy, see :func:`~confide.privacy.config.stricter`); ``sites``
    stands in only where the privacy names none (tests, benchmarks), and one site when neither does."""
    contributors = privacy.min_contributors or sites or 1
    filters: list[Filter] = []
    for spec in privacy.filters:
        if isinstance(spec, GaussianSpec):
            filters.append(
                GaussianClientDP(
                    spec.clip,
                    spec.noise_multiplier,
                    sites=contributors,
                    placement=spec.placement,
                    secure_aggregation=privacy.secure_aggregation,
                )
            )
        elif isinstance(spec, SparsifySpec):
            filters.append(Sparsify(spec.fraction, spec.select))
        elif isinstance(spec, SvtSpec):
            from confide.privacy.svt import SparseVectorFilter

            filters.append(SparseVectorFilter(epsilon=spec.epsilon, fraction=spec.fraction, clip=spec.clip))
    return FilterChain(filters)


def site_ledger(privacy: PrivacyConfig, site: str, path: Path | None) -> Ledger | None:
    """The site's ledger (stored at ``path``, continuing what it holds), when its chain spends privacy or a
    budget is set."""
    if not privacy.spends and privacy.budget is None:
        return None
    delta = privacy.budget.delta if privacy.budget else 1e-5
    budget = privacy.budget.epsilon if privacy.budget else None
    if path is None:
        return Ledger(site=site, delta=delta, budget=budget)
    return Ledger.open(site, path, delta=delta, budget=budget)
