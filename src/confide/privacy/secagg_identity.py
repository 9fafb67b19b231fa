"""Who may be on a secure-aggregation roster: each site signs the keys it advertises with its provisioned key.

Without this, the server makes the roster: it could put one real hospital among clients it runs itself, learn
their secrets and unmask that hospital's update alone. So every :class:`~confide.privacy.secagg.Advertisement` a
site sends carries

* ``certificate``: the site's X.509 certificate (DER), the one in its kit, issued by the federation CA;
* ``signature``: its signature, with the private key of that certificate (ECDSA P-256 with SHA-256 as
  provisioning makes them, or Ed25519), over :func:`signed_payload`: the label
  ``confide-secagg/v1/advertisement``, then the aggregation id, the site's name, the round and both public keys
  (hex), each as a 4-byte big-endian length and its UTF-8 bytes. A signature made for another aggregation, round,
  name or pair of keys does not verify.

Before it shares anything a site checks every roster member (:mod:`confide.site.roster_check`): the certificate
chains to the federation CA in its own kit and is not revoked, it names the member, the names are distinct and
the signature verifies. Revocation comes from a certificate revocation list signed by the CA
(:func:`newest_revocation_list`): the copy in the site's kit, the newest the site has accepted so far, and the one
the server sends with the roster; a list the CA did not sign is refused, and the newest by CRL number is used, so
a server can add revocations a site has not heard of but cannot take any back.

In the consistency check a survivor signs the survivor set it is shown (:func:`survivors_payload`: label
``confide-secagg/v1/survivors``, the aggregation id, the round, the number of survivors and each name, the number
of dropped participants and each name), with the same key; :func:`check_survivor_signature` checks one such
signature against the signer's verified certificate.

Randomness: none here; ECDSA nonces come from OpenSSL (the operating system's CSPRNG).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from confide.privacy.secagg_math import _info
from confide.privacy.secagg_messages import Advertisement, SecAggError

__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "MAX_REVOCATION_LIST_BYTES",
    "MAX_SIGNATURE_BYTES",
    "RevocationList",
    "SigningKey",
    "SiteIdentity",
    "check_signature",
    "check_survivor_signature",
    "newest_revocation_list",
    "sign_advertisement",
    "sign_survivors",
    "signed_payload",
    "survivors_payload",
]

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
MAX_CERTIFICATE_BYTES = 16 * 1024
MAX_SIGNATURE_BYTES = 512
MAX_REVOCATION_LIST_BYTES = 4 * 1024**2


def _load_certificate(data: bytes, what: str) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise SecAggError(f"{what} is not an X.509 certificate ({exc})") from None


@dataclass(frozen=True)
class SiteIdentity:
    """A site's provisioned identity: its name, private key and certificate, the federation CA, and the CA-signed
    revocation list it holds (``revocation_list``, PEM or DER; empty when its kit has none). Never crosses the
    wire: only the certificate and signatures made with the key do."""

    name: str
    key: SigningKey = field(repr=False)
    certificate: x509.Certificate
    ca: x509.Certificate
    revocation_list: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise SecAggError(f"site {self.name!r}: its key is a {type(self.key).__name__}, expected EC or Ed25519")
        if self.key.public_key() != self.certificate.public_key():
            raise SecAggError(f"site {self.name!r}: its private key is not the key of its certificate")

    @classmethod
    def from_pem(
        cls, name: str, key_pem: bytes, certificate_pem: bytes, ca_pem: bytes, revocation_list: bytes = b""
    ) -> SiteIdentity:
        """An identity from the PEM files of a site's kit (an unencrypted private key)."""
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise SecAggError(f"site {name!r}: its private key is not an unencrypted PEM key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise SecAggError(f"site {name!r}: its key is a {type(key).__name__}, expected EC or Ed25519")
        return cls(
            name,
            key,
            _load_certificate(certificate_pem, f"the certificate of site {name!r}"),
            _load_certificate(ca_pem, "the federation CA certificate"),
            revocation_list,
        )

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def ca_pem(self) -> bytes:
        return self.ca.public_bytes(serialization.Encoding.PEM)


def signed_payload(aggregation_id: str, sender: str, round: int, c_public: bytes, s_public: bytes) -> bytes:
    """What a site signs: its two public keys bound to the aggregation, its name and the round."""
    return _info("advertisement", aggregation_id, sender, str(round), c_public.hex(), s_public.hex())


def _payload(ad: Advertisement, round: int) -> bytes:
    return signed_payload(ad.aggregation_id, ad.sender, round, ad.c_public, ad.s_public)


def sign_advertisement(identity: SiteIdentity, ad: Advertisement, round: int) -> Advertisement:
    """``ad`` with the site's certificate and its signature over the keys for this aggregation and round."""
    if ad.sender != identity.name:
        raise SecAggError(f"site {identity.name!r} cannot sign an advertisement sent as {ad.sender!r}")
    return replace(ad, certificate=identity.certificate_der, signature=_sign(identity.key, _payload(ad, round)))


def _sign(key: SigningKey, payload: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return key.sign(payload)


def _verifies(cert: x509.Certificate, signature: bytes, payload: bytes, who: str) -> bool:
    public = cert.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, payload)
        else:
            raise SecAggError(f"{who}: its certificate holds a {type(public).__name__}, expected EC or Ed25519")
    except InvalidSignature:
        return False
    return True


def check_signature(ad: Advertisement, round: int) -> x509.Certificate:
    """The certificate ``ad`` carries, once its signature over the keys for this round verifies with that
    certificate's key (who issued the certificate, and to whom, is :mod:`confide.site.roster_check`'s to check)."""
    who = f"roster member {ad.sender!r}"
    if not ad.certificate or not ad.signature:
        raise SecAggError(f"{who} sent its keys unsigned (no certificate or no signature)")
    if len(ad.certificate) > MAX_CERTIFICATE_BYTES or len(ad.signature) > MAX_SIGNATURE_BYTES:
        raise SecAggError(f"{who}: its certificate or signature is oversized")
    cert = _load_certificate(ad.certificate, f"the certificate of {who}")
    if not _verifies(cert, ad.signature, _payload(ad, round), who):
        raise SecAggError(
            f"{who}: the signature over its keys does not verify for aggregation {ad.aggregation_id!r}, round "
            f"{round} (forged keys, or a signature replayed from another aggregation or round)"
        )
    return cert


def survivors_payload(aggregation_id: str, round: int, survivors: Sequence[str], dropped: Sequence[str]) -> bytes:
    """What a survivor signs in the consistency check: the survivors and the dropped participants it was shown,
    bound to the aggregation and the round."""
    counted = (str(len(survivors)), *survivors, str(len(dropped)), *dropped)
    return _info("survivors", aggregation_id, str(round), *counted)


def sign_survivors(
    identity: SiteIdentity, aggregation_id: str, round: int, survivors: Sequence[str], dropped: Sequence[str]
) -> bytes:
    return _sign(identity.key, survivors_payload(aggregation_id, round, survivors, dropped))


def check_survivor_signature(
    cert: x509.Certificate,
    signer: str,
    signature: bytes,
    *,
    aggregation_id: str,
    round: int,
    survivors: Sequence[str],
    dropped: Sequence[str],
) -> None:
    """Refuse a signature by ``signer`` (whose verified certificate is ``cert``) that is not over this very set."""
    if not isinstance(signature, bytes) or not signature or len(signature) > MAX_SIGNATURE_BYTES:
        raise SecAggError(f"the survivor signature of {signer!r} is malformed")
    if not _verifies(cert, signature, survivors_payload(aggregation_id, round, survivors, dropped), repr(signer)):
        raise SecAggError(
            f"the survivor signature of {signer!r} does not verify for this survivor set of aggregation "
            f"{aggregation_id!r}, round {round} (it signed another set, or none)"
        )


@dataclass(frozen=True)
class RevocationList:
    """A revocation list the federation CA signed: its CRL number, the revoked serial numbers, until when it is
    current, where it came from, and its bytes (to keep as the floor for later rosters)."""

    number: int
    serials: frozenset[int]
    next_update: datetime | None
    source: str
    data: bytes = field(repr=False)


def _read_revocation_list(data: bytes, source: str, ca: x509.Certificate) -> RevocationList:
    if len(data) > MAX_REVOCATION_LIST_BYTES:
        raise SecAggError(f"{source} is oversized ({len(data)} bytes)")
    load = x509.load_pem_x509_crl if data.lstrip().startswith(b"-----BEGIN") else x509.load_der_x509_crl
    try:
        crl = load(data)
    except ValueError as exc:
        raise SecAggError(f"{source} is not a certificate revocation list ({exc})") from None
    public = ca.public_key()
    if crl.issuer != ca.subject or not isinstance(public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise SecAggError(f"{source} was not issued by the federation CA (issuer {crl.issuer.rfc4514_string()!r})")
    if not crl.is_signature_valid(public):
        raise SecAggError(f"{source} is not signed by the federation CA")
    try:
        number = int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        number = 0
    return RevocationList(
        number=number,
        serials=frozenset(entry.serial_number for entry in crl),
        next_update=crl.next_update_utc,
        source=source,
        data=data,
    )


def newest_revocation_list(
    ca: x509.Certificate, candidates: Mapping[str, bytes], *, now: datetime | None = None
) -> RevocationList:
    """The newest (by CRL number) of the non-empty ``candidates`` (source -> CRL bytes); each must be signed by
    ``ca``, and the newest must still be current at ``now``. No list at all is refused: without one a site
    cannot tell whether a roster member's certificate was revoked."""
    when = now or datetime.now(UTC)
    lists = [_read_revocation_list(data, source, ca) for source, data in candidates.items() if data]
    if not lists:
        raise SecAggError(
            "no revocation list signed by the federation CA (none in this site's kit, none from the server): "
            "it cannot tell whether a roster member's certificate was revoked"
        )
    newest = max(lists, key=lambda item: item.number)
    if newest.next_update is not None and when > newest.next_update:
        raise SecAggError(
            f"the newest revocation list ({newest.source}, number {newest.number}) expired on "
            f"{newest.next_update:%Y-%m-%d %H:%M} UTC: the federation operator must issue a new one"
        )
    return newest
