"""Signed advertisements and revocation lists: what verifies, what does not, and which list a site uses."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from confide.privacy.secagg import Advertisement, SecAggClient, SecAggError
from confide.privacy.secagg_identity import (
    SiteIdentity,
    check_signature,
    newest_revocation_list,
    sign_advertisement,
)
from confide.provision import site_identity
from confide.provision_kit import build_ca, build_crl, cert_pem
from confide.sim_identities import SimFederation

AGG = "round-4-identity"
NOW = datetime.now(UTC).replace(microsecond=0)
CA_KEY, CA = build_ca("fed", NOW, 30)


def _crl(number: int, revoked: list[int], *, days: int = 30) -> bytes:
    return build_crl(CA_KEY, CA, [(s, NOW) for s in revoked], number=number, now=NOW, next_update=NOW + timedelta(days))


def _ed25519_identity(name: str) -> SiteIdentity:
    """A site whose provisioned key is Ed25519, its certificate signed by the federation CA."""
    key = ed25519.Ed25519PrivateKey.generate()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(CA.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=5))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(CA_KEY, hashes.SHA256())
    )
    return SiteIdentity(name, key, cert, CA)


@pytest.mark.parametrize("kind", ["ecdsa", "ed25519"])
def test_a_signature_verifies_only_for_its_own_aggregation_round_name_and_keys(kind: str) -> None:
    identity = SimFederation.create(["a"]).identities["a"] if kind == "ecdsa" else _ed25519_identity("a")
    signed = sign_advertisement(identity, SecAggClient("a", AGG, 3).advertise(), 4)
    other_keys = SecAggClient("a", AGG, 3).advertise()
    altered = [
        (replace(signed, aggregation_id="round-4-other"), 4),
        (replace(signed, sender="b"), 4),
        (replace(signed, s_public=other_keys.s_public), 4),
        (signed, 5),
    ]

    cert = check_signature(signed, 4)
    refusals = [_refusal(ad, round) for ad, round in altered]

    assert cert.serial_number == identity.certificate.serial_number
    assert all("signature over its keys does not verify" in reason for reason in refusals), refusals
    assert "for aggregation 'round-4-identity', round 5" in refusals[-1]


def _refusal(ad: Advertisement, round: int) -> str:
    try:
        check_signature(ad, round)
    except SecAggError as exc:
        return str(exc)
    return "verified"


def test_an_ed25519_site_certificate_proves_its_name() -> None:
    identity = _ed25519_identity("site-7")

    name = site_identity(cert_pem(identity.certificate), cert_pem(CA))

    assert name == "site-7"


def test_unsigned_keys_and_a_key_that_is_not_the_certificates_are_refused() -> None:
    fed = SimFederation.create(["a", "b"])
    unsigned = SecAggClient("a", AGG, 3).advertise()

    with pytest.raises(SecAggError, match="roster member 'a' sent its keys unsigned"):
        check_signature(unsigned, 1)
    with pytest.raises(SecAggError, match="its private key is not the key of its certificate"):
        replace(fed.identities["a"], key=fed.identities["b"].key)
    with pytest.raises(SecAggError, match="cannot sign an advertisement sent as 'b'"):
        sign_advertisement(fed.identities["a"], SecAggClient("b", AGG, 3).advertise(), 1)


def test_the_newest_revocation_list_wins_whichever_side_holds_it() -> None:
    older, newer = _crl(1, []), _crl(2, [42])

    from_server = newest_revocation_list(CA, {"kit": older, "server": newer}, now=NOW)
    from_kit = newest_revocation_list(CA, {"kit": newer, "server": older}, now=NOW)

    assert (from_server.number, from_server.serials, from_server.source) == (2, frozenset({42}), "server")
    assert (from_kit.number, from_kit.serials, from_kit.source) == (2, frozenset({42}), "kit")


def test_a_revocation_list_that_is_forged_garbled_or_out_of_date_is_refused() -> None:
    other_key, other_ca = build_ca("fed", NOW, 30)  # same name, another key
    forged = build_crl(other_key, other_ca, [], number=9, now=NOW, next_update=NOW + timedelta(days=1))

    with pytest.raises(SecAggError, match="server is not signed by the federation CA"):
        newest_revocation_list(CA, {"server": forged}, now=NOW)
    with pytest.raises(SecAggError, match="server is not a certificate revocation list"):
        newest_revocation_list(CA, {"server": b"-----BEGIN X509 CRL-----\nnope\n-----END X509 CRL-----\n"}, now=NOW)
    with pytest.raises(SecAggError, match="expired on"):
        newest_revocation_list(CA, {"kit": _crl(3, [], days=1)}, now=NOW + timedelta(days=2))
    with pytest.raises(SecAggError, match="no revocation list signed by the federation CA"):
        newest_revocation_list(CA, {"kit": b"", "server": b""}, now=NOW)
