"""A site's check of a secure-aggregation roster, before it shares anything: every member a real site.

The server makes the roster, so a site trusts none of it. For each member it checks (any failure refuses the
whole aggregation, with a reason naming the member):

* the certificate the member sent is a site certificate the federation CA in this site's own kit issued, current
  and not revoked (:func:`confide.provision.site_identity`, the check the server makes on every call), with the
  revocation list of :func:`~confide.privacy.secagg_identity.newest_revocation_list`;
* the site the certificate names is the member's name, and no two members share a name or a certificate;
* the member's signature over its keys verifies for this aggregation and this round
  (:func:`~confide.privacy.secagg_identity.check_signature`).

Then the numbers: at least ``min_roster`` verified sites (the site's policy) and a threshold above half of them (a
server lying about dropouts cannot unmask a single update). The threshold t is the fewest updates any sum the
server can unmask holds; training is told it, and the site's ledger charges its distributed noise for
min(t, min_roster) shares of it (a threshold below the policy's minimum costs the site more epsilon, honestly
accounted, rather than refusing the round).

Later, the consistency check of Bonawitz et al.: a site signs one survivor set per aggregation
(:func:`check_survivors`), and answers an unmask request only for the set it signed and only with the signatures of
at least the threshold of survivors over that same set (:func:`check_confirmations`). Without it a server could
show different sites different survivor sets and, from their answers, unmask a sum of fewer updates than the
threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confide.errors import ConfigError
from confide.privacy.secagg import Advertisement, Roster, SecAggError
from confide.privacy.secagg_identity import (
    RevocationList,
    SiteIdentity,
    check_signature,
    check_survivor_signature,
    newest_revocation_list,
)
from confide.provision import IdentityError, site_identity

__all__ = ["VerifiedRoster", "check_confirmations", "check_survivors", "verify_roster"]


@dataclass(frozen=True)
class VerifiedRoster:
    """A roster whose every member is a verified site: their names, the threshold, the revocation list used, and
    each member's verified certificate (to check its signature over the survivor set later)."""

    names: tuple[str, ...]
    threshold: int
    revocation: RevocationList
    certificates: Mapping[str, x509.Certificate] = field(repr=False)


def _check_member(
    ad: Advertisement, identity: SiteIdentity, revoked: frozenset[int], round: int, now: datetime
) -> x509.Certificate:
    """The member's certificate once it and the member's signature hold."""
    who = f"roster member {ad.sender!r}"
    cert = check_signature(ad, round)
    try:
        name = site_identity(cert.public_bytes(serialization.Encoding.PEM), identity.ca_pem, revoked=revoked, now=now)
    except (IdentityError, ConfigError) as exc:
        raise SecAggError(f"{who}: {exc}") from None
    if name != ad.sender:
        raise SecAggError(f"{who} presents the certificate of site {name!r}: its keys are not that member's")
    return cert


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
    certificates: dict[str, x509.Certificate] = {}
    for ad in roster.advertisements:
        if ad.aggregation_id != roster.aggregation_id:
            raise SecAggError(f"roster member {ad.sender!r} advertised for aggregation {ad.aggregation_id!r}")
        cert = _check_member(ad, identity, revocation.serials, round, now)
        if cert.serial_number in serials:
            raise SecAggError(
                f"roster members {serials[cert.serial_number]!r} and {ad.sender!r} present one certificate"
            )
        serials[cert.serial_number] = ad.sender
        certificates[ad.sender] = cert
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
    return VerifiedRoster(names, t, revocation, MappingProxyType(certificates))


def check_survivors(
    survivors: tuple[str, ...], dropped: tuple[str, ...], *, peers: tuple[str, ...], me: str, threshold: int
) -> None:
    """Refuse a survivor set that this site must not sign: not the participants split in two, this site not among
    the survivors, or fewer survivors than the threshold (the sum would hold fewer updates)."""
    both = sorted(set(survivors) & set(dropped))
    if both:
        raise SecAggError(f"the survivor set names {both} both as survivors and as dropped")
    if len(set(survivors)) != len(survivors) or len(set(dropped)) != len(dropped):
        raise SecAggError("the survivor set names a participant twice")
    named = set(survivors) | set(dropped)
    if named != set(peers):
        unknown, missing = sorted(named - set(peers)), sorted(set(peers) - named)
        raise SecAggError(
            f"the survivor set does not split the participants (unknown: {unknown}, missing: {missing[:5]})"
        )
    if me not in survivors:
        raise SecAggError("the survivor set does not list this site as a survivor")
    if len(survivors) < threshold:
        raise SecAggError(f"only {len(survivors)} survivors, threshold is {threshold}: refusing to unmask")


def check_confirmations(
    signatures: tuple[tuple[str, bytes], ...],
    roster: VerifiedRoster,
    *,
    aggregation_id: str,
    round: int,
    survivors: tuple[str, ...],
    dropped: tuple[str, ...],
) -> None:
    """At least the threshold of distinct survivors signed this very survivor set (each site signs one set per
    aggregation, and the threshold is above half the roster: no two sets can both gather that many), so every
    site answering the unmask request was shown the same survivors, and the server learns the sum of those only."""
    valid: set[str] = set()
    for signer, signature in signatures:
        if signer in valid:
            raise SecAggError(f"survivor {signer!r} is listed twice among the signatures of the survivor set")
        if signer not in survivors or signer not in roster.certificates:
            raise SecAggError(f"the survivor set is signed by {signer!r}, which is not one of its survivors")
        check_survivor_signature(
            roster.certificates[signer],
            signer,
            signature,
            aggregation_id=aggregation_id,
            round=round,
            survivors=survivors,
            dropped=dropped,
        )
        valid.add(signer)
    if len(valid) < roster.threshold:
        raise SecAggError(
            f"only {len(valid)} survivors signed the survivor set, threshold is {roster.threshold}: other sites may "
            "have been shown other survivors, refusing to unmask"
        )
