"""The simulator's federation: a CA, one identity per site and a revocation list, made in memory at start.

Secure aggregation in a simulation signs and checks rosters exactly as a deployment does
(:mod:`confide.privacy.secagg_identity`, :mod:`confide.site.roster_check`): the keys and certificates come from
the same code as provisioning's (:mod:`confide.provision_kit`: EC P-256, SHA-256, CN = the site's name,
clientAuth), only nothing is written to disk and the CA's private key is dropped once the certificates and the
revocation list are signed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from cryptography import x509

from confide.errors import ConfigError
from confide.privacy.secagg_identity import SiteIdentity
from confide.provision import check_site_name
from confide.provision_kit import CLIENT_AUTH, build_ca, build_crl, issue

__all__ = ["SIMULATION_DAYS", "SimFederation"]

SIMULATION_DAYS = 30
"""How long the simulator's certificates and revocation list stay valid."""


@dataclass(frozen=True)
class SimFederation:
    """Each site's identity (key, certificate, the CA, no revocation list of its own) and the federation's
    revocation list (PEM, signed by the CA), which the simulated server sends with every roster."""

    identities: Mapping[str, SiteIdentity] = field(repr=False)
    revocation_list: bytes = field(repr=False)
    ca: x509.Certificate = field(repr=False)

    @classmethod
    def create(
        cls,
        sites: Iterable[str],
        *,
        revoked: Iterable[str] = (),
        name: str = "simulation",
        now: datetime | None = None,
    ) -> SimFederation:
        """A CA named ``name``, a certificate for each of ``sites`` and a revocation list naming the ``revoked``
        ones (their identities are still made, as a revoked hospital still holds its key)."""
        when = (now or datetime.now(UTC)).replace(microsecond=0)
        names = [check_site_name(site) for site in sites]
        gone = set(revoked)
        if not gone <= set(names):
            raise ConfigError(f"cannot revoke sites {sorted(gone - set(names))}: they are not in the federation")
        ca_key, ca_cert = build_ca(name, when, SIMULATION_DAYS)
        identities: dict[str, SiteIdentity] = {}
        serials: list[tuple[int, datetime]] = []
        for site in names:
            key, cert = issue(
                ca_key,
                ca_cert,
                federation=name,
                common_name=site,
                usage=CLIENT_AUTH,
                alt_names=[x509.UniformResourceIdentifier(f"confide://{name}/sites/{site}")],
                now=when,
                days=SIMULATION_DAYS,
            )
            identities[site] = SiteIdentity(site, key, cert, ca_cert)
            if site in gone:
                serials.append((cert.serial_number, when))
        crl = build_crl(
            ca_key, ca_cert, serials, number=1, now=when, next_update=when + timedelta(days=SIMULATION_DAYS)
        )
        return cls(identities=MappingProxyType(identities), revocation_list=crl, ca=ca_cert)
