"""The pieces of provisioning below the API of :mod:`confide.provision`.

EC P-256 keys, X.509 certificates and CRLs; file writes that never leave a private key readable by
anyone but its owner, not even for a moment, and that replace public files atomically; the manifest
``federation.json`` and the revocation list ``server/revoked.json``.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from confide.errors import ConfigError
from confide.validation import describe

#: Certificates start this much before the moment they are issued, so that a peer whose clock runs a
#: little behind still accepts them.
CLOCK_SKEW = timedelta(minutes=5)
#: The CA lives at least this long, so that sites added later can still be signed.
CA_MIN_DAYS = 10 * 365

MANIFEST = "federation.json"
REVOKED = "revoked.json"
ROSTER = "roster.json"
CRL = "crl.pem"

PrivateKey = ec.EllipticCurvePrivateKey


# ---------------------------------------------------------------------------------------------- files


def make_private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700); parents are created 0700 too. It must not exist yet."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.mkdir(path, 0o700)
    os.chmod(path, 0o700)  # the umask may have removed bits; 0700 exactly


def write_private(path: Path, data: bytes) -> None:
    """Write a new secret file created 0600 from the start; never replaces an existing file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_public(path: Path, data: bytes) -> None:
    """Write a non-secret file atomically (a reader sees the old or the new content, never half)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ encoding


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read certificate {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM certificate: {exc}") from None


def read_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read private key {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, expected an EC private key")
    return key


def serial_hex(serial: int) -> str:
    """The serial number as OpenSSL prints it (upper-case hex, colon-free)."""
    return f"{serial:X}"


# ------------------------------------------------------------------------------------- certificates


def _name(federation: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; an end entity only signs its TLS handshakes (ECDHE-ECDSA)."""
    flags = dict.fromkeys(("content_commitment", "key_encipherment", "data_encipherment", "key_agreement"), False)
    return x509.KeyUsage(
        digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False, **flags
    )


def build_ca(federation: str, now: datetime, days: int) -> tuple[PrivateKey, x509.Certificate]:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = new_key()
    name = _name(federation, "Confide federation CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=max(days, CA_MIN_DAYS)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def server_names(host: str) -> list[x509.GeneralName]:
    """subjectAltName of the server: its public host, plus localhost and 127.0.0.1 for local tests."""
    names: list[x509.GeneralName] = []
    for entry in (host, "localhost", "127.0.0.1"):
        try:
            general: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(entry))
        except ValueError:
            general = x509.DNSName(entry.lower())
        if general not in names:
            names.append(general)
    return names


def issue(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    *,
    federation: str,
    common_name: str,
    usage: x509.ObjectIdentifier,
    alt_names: Sequence[x509.GeneralName],
    now: datetime,
    days: int,
) -> tuple[PrivateKey, x509.Certificate]:
    """A new key and its end-entity certificate signed by the CA, never outliving the CA."""
    if now >= ca_cert.not_valid_after_utc:
        raise ConfigError(f"the federation CA expired on {ca_cert.not_valid_after_utc:%Y-%m-%d}; it cannot sign")
    key = new_key()
    not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(federation, common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - CLOCK_SKEW, ca_cert.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(alt_names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH


def build_crl(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    revoked: Iterable[tuple[int, datetime]],
    *,
    number: int,
    now: datetime,
    next_update: datetime,
) -> bytes:
    """A CRL signed by the CA listing ``(serial, revocation date)`` pairs, as PEM."""
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    for serial, when in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


# ------------------------------------------------------------------------------ manifest and lists


def grpc_target(host: str, port: int) -> str:
    """``host:port`` as a gRPC target (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SiteRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    serial: int
    serial_hex: str
    status: Literal["active", "revoked"] = "active"
    issued_at: datetime
    not_after: datetime
    revoked_at: datetime | None = None
    reason: str = ""


class Manifest(BaseModel):
    """``federation.json``."""

    model_config = ConfigDict(extra="forbid")
    format: Literal[1] = 1
    federation: str
    host: str
    port: int
    validity_days: int
    ca_serial: int
    server_serial: int
    crl_number: int = 0
    sites: dict[str, SiteRecord] = Field(default_factory=dict)


def write_yaml(path: Path, document: dict[str, Any]) -> None:
    write_public(path, yaml.safe_dump(document, sort_keys=False).encode())


def load_ca(out: Path) -> tuple[PrivateKey, x509.Certificate]:
    """The CA key and certificate under ``out/ca``, checked to belong together."""
    key_path, cert_path = out / "ca" / "ca.key", out / "ca" / "ca.crt"
    for path in (key_path, cert_path):
        if not path.is_file():
            raise ConfigError(f"no federation CA at {path}: provision the federation first")
    key, cert = read_key(key_path), read_cert(cert_path)
    if key.public_key() != cert.public_key():
        raise ConfigError(f"{key_path} is not the private key of {cert_path}")
    return key, cert


def load_manifest(out: Path) -> Manifest:
    path = out / MANIFEST
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the federation manifest {path}: {exc.strerror or exc}") from None
    except ValidationError as exc:
        lines = "\n  ".join(describe(e) for e in exc.errors())
        raise ConfigError(f"federation manifest {path} is invalid:\n  {lines}") from None


def save_manifest(out: Path, manifest: Manifest) -> Path:
    path = out / MANIFEST
    write_public(path, manifest.model_dump_json(indent=2).encode() + b"\n")
    return path


def write_revocation(
    out: Path, manifest: Manifest, ca_key: PrivateKey, ca_cert: x509.Certificate, now: datetime
) -> Path:
    """Rewrite ``server/revoked.json`` and ``server/crl.pem`` from the manifest (bumps the CRL number), and the
    ``crl.pem`` of every site kit still in ``out/sites``."""
    manifest.crl_number += 1
    revoked = sorted(
        ((name, r) for name, r in manifest.sites.items() if r.status == "revoked"), key=lambda item: item[1].serial
    )
    document = {
        "federation": manifest.federation,
        "updated_at": now.isoformat(),
        "crl_number": manifest.crl_number,
        "serials": [r.serial for _, r in revoked],
        "sites": [
            {
                "site": name,
                "serial": r.serial,
                "serial_hex": r.serial_hex,
                "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
                "reason": r.reason,
            }
            for name, r in revoked
        ],
    }
    next_update = min(now + timedelta(days=manifest.validity_days), ca_cert.not_valid_after_utc)
    crl = build_crl(
        ca_key,
        ca_cert,
        [(r.serial, r.revoked_at or now) for _, r in revoked],
        number=manifest.crl_number,
        now=now,
        next_update=max(next_update, now + timedelta(minutes=1)),
    )
    path = out / "server" / REVOKED
    write_public(out / "server" / CRL, crl)
    for site in manifest.sites:
        if (out / "sites" / site).is_dir():
            write_public(out / "sites" / site / CRL, crl)
    write_public(path, json.dumps(document, indent=2).encode() + b"\n")
    return path


def write_roster(out: Path, manifest: Manifest) -> Path:
    """Rewrite ``server/roster.json``: every site issued a certificate, with that certificate's serial number."""
    document = {
        "federation": manifest.federation,
        "sites": {name: record.serial for name, record in sorted(manifest.sites.items())},
    }
    path = out / "server" / ROSTER
    write_public(path, json.dumps(document, indent=2).encode() + b"\n")
    return path


def load_roster(path: Path) -> dict[str, int]:
    """The sites a server accepts, name -> certificate serial (what the server passes to :func:`site_identity`)."""
    try:
        document = json.loads(Path(path).read_bytes())
        sites = document["sites"]
        if not isinstance(sites, dict) or not all(isinstance(k, str) and type(v) is int for k, v in sites.items()):
            raise TypeError("sites must map site names to serial numbers")
    except OSError as exc:
        raise ConfigError(f"cannot read the site roster {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"site roster {path} is invalid: {exc}") from None
    return dict(sites)


def load_revoked(path: Path) -> frozenset[int]:
    """The revoked serial numbers in a ``revoked.json`` (what the server passes to :func:`site_identity`)."""
    try:
        document = json.loads(Path(path).read_bytes())
        serials = document["serials"]
        if not isinstance(serials, list) or not all(type(s) is int for s in serials):
            raise TypeError("serials must be a list of integers")
    except OSError as exc:
        raise ConfigError(f"cannot read revocation list {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"revocation list {path} is invalid: {exc}") from None
    return frozenset(serials)
