"""A site's check of a secure-aggregation roster, before it shares anything: every member a real site.

The server makes the roster, so a site trusts none of it. For each member it checks (any failure refuses the
whole aggregation, with a reason naming the member):

* the certificate the member sent is a site certificate the federation CA in this site's own kit issued, current
  and not revoked (:func:`confide.provision.site_identity`, the check the server makes on every call), with the
  revocation list of :func:`~confide.privacy.secagg_identity.newest_revocation_list`;
* the site the certificate names is the member's name, and no two members share a name or a certificate;
* the member's signature over its keys verifies for this aggregation and this round
  (:func:`~confide.privacy.secagg_identity.check_signature`).

Then the numbers: at least ``min_roster`` verified sites (the site's policy), a threshold above half of them (a
server lying about dropouts cannot unmask a single update) and at least ``min_roster`` (every sum the server can
unmask holds at least that many updates).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives import serialization

from confide.errors import ConfigError
from confide.privacy.secagg import Advertisement, Roster, SecAggError
from confide.privacy.secagg_identity import RevocationList, SiteIdentity, check_signature, newest_revocation_list
from confide.provision import IdentityError, site_identity

__all__ = ["VerifiedRoster", "verify_roster"]


@dataclass(frozen=True)
class VerifiedRoster:
    """A roster whose every member is a verified site: their names, the threshold, the revocation list used."""

    names: tuple[str, ...]
    threshold: int
    revocation: RevocationList


def _check_member(ad: Advertisement, identity: SiteIdentity, revoked: frozenset[int], round: int, now: datetime) -> int:
    """The member's certificate serial number once its certificate and signature hold."""
    who = f"roster member {ad.sender!r}"
    cert = check_signature(ad, round)
    try:
        name = site_identity(cert.public_bytes(serialization.Encoding.PEM), identity.ca_pem, revoked=revoked, now=now)
    except (IdentityError, ConfigError) as exc:
        raise SecAggError(f"{who}: {exc}") from None
    if name != ad.sender:
        raise SecAggError(f"{who} presents the certificate of site {name!r}: its keys are not that member's")
    return cert.serial_number


def verify_roster(
    roster: Roster,
    identity: SiteIdentity,
    *,
    round: int,
    own: Advertisement,
    min_roster: int,
    accepted_revocations: bytes = b"",
    now: datetime,
) -> VerifiedRoster:
    """Check ``roster`` as the site ``identity`` in the round it advertised ``own`` in (see the module), or raise
    :class:`~confide.privacy.secagg.SecAggError` saying which member or number is wrong.
    ``accepted_revocations``: the newest revocation list this site accepted before (a floor the server cannot
    lower)."""
    names = roster.names
    folded: dict[str, str] = {}
    for name in names:
        first = folded.setdefault(name.lower(), name)
        if first != name or names.count(name) > 1:
            raise SecAggError(f"roster member {name!r} is listed twice (as {first!r} and {name!r})")
    mine = [ad for ad in roster.advertisements if ad.sender == identity.name]
    if not mine or not mine[0].same_keys(own):
        raise SecAggError(
            f"this site ({identity.name!r}) is not on the roster, or the roster carries other keys under its name"
        )
    revocation = newest_revocation_list(
        identity.ca,
        {
            "the revocation list in this site's kit": identity.revocation_list,
            "the revocation list this site accepted before": accepted_revocations,
            "the revocation list the server sent": roster.revocation_list,
        },
        now=now,
    )
    serials: dict[int, str] = {}
    for ad in roster.advertisements:
        if ad.aggregation_id != roster.aggregation_id:
            raise SecAggError(f"roster member {ad.sender!r} advertised for aggregation {ad.aggregation_id!r}")
        serial = _check_member(ad, identity, revocation.serials, round, now)
        if serial in serials:
            raise SecAggError(f"roster members {serials[serial]!r} and {ad.sender!r} present one certificate")
        serials[serial] = ad.sender
    n, t = len(names), roster.threshold
    if n < min_roster:
        raise SecAggError(
            f"the roster holds {n} verified site(s), this site's policy needs at least {min_roster} in any aggregation"
        )
    if 2 * t <= n:
        raise SecAggError(
            f"the roster's threshold {t} is not above half of its {n} members: a server lying about dropouts "
            "could unmask a single update"
        )
    if t < min_roster:
        raise SecAggError(
            f"the roster's threshold {t} is below this site's minimum of {min_roster} contributors: the server "
            f"could unmask a sum of only {t} updates"
        )
    return VerifiedRoster(names=names, threshold=t, revocation=revocation)
