"""Provisioning of a federation for a real deployment: a CA, a server kit and one kit per site.

Sites dial out to the server over gRPC with mutual TLS. Provisioning makes the identity material for
that, from a federation file (see :class:`FederationSpec`), into a folder ``out/``::

    out/
    ├── federation.json        manifest: every site, its certificate serial number, active or revoked
    ├── ca/                    0700; stays with the operator, never shipped
    │   ├── ca.key             0600, the CA private key (unencrypted: keep this folder offline)
    │   └── ca.crt
    ├── server/                0700; the server kit, copied to the server machine
    │   ├── server.key         0600
    │   ├── server.crt         EKU serverAuth; subjectAltName: the host, localhost, 127.0.0.1
    │   ├── ca.crt             the CA that site certificates must chain to
    │   ├── roster.json        the sites the server accepts, each with its certificate's serial number
    │   ├── revoked.json       serial numbers the server refuses (both re-read when they change)
    │   ├── crl.pem            the same list as an X.509 CRL signed by the CA
    │   └── server.yaml        federation name, host, port, file names (relative to this folder)
    └── sites/<name>/          0700; one kit per site, handed to that hospital
        ├── site.key           0600
        ├── site.crt           CN = the site's name, EKU clientAuth
        ├── ca.crt             the CA that the server certificate must chain to
        ├── crl.pem            the CA-signed revocation list as of the kit (rewritten by revoke_site)
        └── site.yaml          site name, federation name, server address host:port

Private keys are EC P-256, certificates are signed with SHA-256. Key files are created 0600 from the
start; nothing ever replaces an existing key, and :func:`provision` refuses a folder that already holds
a federation, so a re-run cannot silently replace the CA of a live federation.

**A site's identity is the name in its verified certificate**: :func:`site_identity` checks the peer
certificate of a TLS connection (signed by this CA, in its validity window, clientAuth, not revoked)
and returns its CN, which must be a site of the roster holding that very certificate. The server must use that
name, never a site name stated in a message.

A site checks every member of a secure-aggregation roster against the newest CA-signed revocation list it knows:
the ``crl.pem`` of its kit, and the one the server sends (:mod:`confide.site.roster_check`).

After :func:`add_site`, copy ``server/roster.json`` to the server; after :func:`revoke_site`, copy
``server/revoked.json`` and ``crl.pem`` to the server and ``sites/<name>/crl.pem`` to each site. Two commands
must not change the same ``out`` folder at the same time.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from confide.errors import ConfideError, ConfigError
from confide.provision_kit import (
    CLIENT_AUTH,
    CRL,
    MANIFEST,
    REVOKED,
    ROSTER,
    SERVER_AUTH,
    Manifest,
    PrivateKey,
    SiteRecord,
    build_ca,
    grpc_target,
    issue,
    key_pem,
    load_ca,
    load_manifest,
    load_revoked,
    make_private_dir,
    save_manifest,
    serial_hex,
    server_names,
    write_private,
    write_public,
    write_revocation,
    write_roster,
    write_yaml,
)
from confide.provision_kit import cert_pem as pem_of
from confide.validation import read_yaml, validate_document

__all__ = [
    "FederationSpec",
    "IdentityError",
    "ProvisionResult",
    "ServerSpec",
    "add_site",
    "check_site_name",
    "load_federation",
    "load_revoked",
    "parse_federation",
    "provision",
    "revoke_site",
    "site_identity",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # starts alphanumeric: never ".", "..", a hidden folder or an option
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

SiteName = Annotated[str, Field(min_length=1, max_length=64, pattern=rf"^{_NAME.pattern}$")]


class IdentityError(ConfideError):
    """A peer certificate does not prove a site identity in this federation (the message says why)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSpec(_Strict):
    host: str = Field(min_length=1, max_length=253, description="DNS name or IP address that sites dial")
    port: int = Field(ge=1, le=65535)

    @field_validator("host")
    @classmethod
    def _dns_name_or_ip(cls, host: str) -> str:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            labels = host.split(".")
            if not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
                raise ValueError(f"{host!r} is neither an IP address nor a DNS name") from None
            return host.lower()
        if address.is_unspecified:
            raise ValueError(f"{host} is a bind-all address; give the address that sites dial")
        return str(address)


class FederationSpec(_Strict):
    """The federation file."""

    name: str = Field(min_length=1, max_length=64, pattern=rf"^{_NAME.pattern}$")
    server: ServerSpec
    sites: list[SiteName] = Field(description="unique site names; more can be added later with add_site")
    validity_days: int = Field(default=365, ge=1, le=3650, description="lifetime of server and site certificates")

    @field_validator("sites")
    @classmethod
    def _unique(cls, sites: list[str]) -> list[str]:
        seen: dict[str, str] = {}
        for site in sites:
            first = seen.get(site.lower())
            if first is not None:
                alike = "" if first == site else f" (same as {first!r} when case is ignored)"
                raise ValueError(f"duplicate site {site!r}{alike}")
            seen[site.lower()] = site
        return sites


@dataclass(frozen=True)
class ProvisionResult:
    out: Path
    ca_cert: Path
    server_kit: Path
    site_kits: dict[str, Path]
    manifest: Path


# -------------------------------------------------------------------------------------- federation file


def parse_federation(document: Any, *, source: str = "federation") -> FederationSpec:
    """Validate a federation given as a mapping (for example parsed YAML)."""
    return validate_document(document, FederationSpec, source=source, what="federation")


def load_federation(path: Path) -> FederationSpec:
    """Read and validate a federation file."""
    return parse_federation(read_yaml(path, "federation"), source=f"federation file {path}")


# ------------------------------------------------------------------------------------------- helpers


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC).replace(microsecond=0)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ConfigError(f"now must be timezone-aware, got {now.isoformat()}")
    return now.astimezone(UTC).replace(microsecond=0)


def check_site_name(site: str) -> str:
    """``site`` if it is a valid site name (what a certificate's CN may hold), else a ConfigError saying why."""
    try:
        return TypeAdapter(SiteName).validate_python(site)
    except ValidationError as exc:
        raise ConfigError(f"site name {site!r} is invalid: {exc.errors()[0]['msg']}") from None


def _write_site_kit(
    out: Path, manifest: Manifest, site: str, ca_key: PrivateKey, ca_cert: x509.Certificate, now: datetime
) -> SiteRecord:
    kit = out / "sites" / site
    try:
        make_private_dir(kit)
    except FileExistsError:
        raise ConfigError(f"{kit} already exists; remove it or choose another site name") from None
    uri = x509.UniformResourceIdentifier(f"confide://{manifest.federation}/sites/{site}")
    key, cert = issue(
        ca_key,
        ca_cert,
        federation=manifest.federation,
        common_name=site,
        usage=CLIENT_AUTH,
        alt_names=[uri],
        now=now,
        days=manifest.validity_days,
    )
    write_private(kit / "site.key", key_pem(key))
    write_public(kit / "site.crt", pem_of(cert))
    write_public(kit / "ca.crt", pem_of(ca_cert))
    if (out / "server" / CRL).is_file():  # a site added later starts from the federation's current list
        write_public(kit / CRL, (out / "server" / CRL).read_bytes())
    write_yaml(
        kit / "site.yaml",
        {
            "federation": manifest.federation,
            "site": site,
            "server": grpc_target(manifest.host, manifest.port),
            "certificate": "site.crt",
            "private_key": "site.key",
            "ca": "ca.crt",
            "revocation_list": CRL,
        },
    )
    return SiteRecord(
        serial=cert.serial_number,
        serial_hex=serial_hex(cert.serial_number),
        issued_at=now,
        not_after=cert.not_valid_after_utc,
    )


# ---------------------------------------------------------------------------------------------- API


def provision(spec: FederationSpec, out: Path, *, now: datetime | None = None) -> ProvisionResult:
    """Create the CA, the server kit and one kit per site under ``out`` (which must not hold a federation)."""
    when, out = _now(now), Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder")
    present = [name for name in ("ca", "server", "sites", MANIFEST) if (out / name).exists()]
    if present:
        raise ConfigError(
            f"{out} already holds a federation ({', '.join(present)}); refusing to replace its CA. "
            "Use add_site to add a site, or provision into an empty folder"
        )
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca_key, ca_cert = build_ca(spec.name, when, spec.validity_days)
        make_private_dir(out / "ca")
        write_private(out / "ca" / "ca.key", key_pem(ca_key))
        write_public(out / "ca" / "ca.crt", pem_of(ca_cert))

        server = out / "server"
        make_private_dir(server)
        server_key, server_cert = issue(
            ca_key,
            ca_cert,
            federation=spec.name,
            common_name=spec.server.host if len(spec.server.host) <= 64 else "server",
            usage=SERVER_AUTH,
            alt_names=server_names(spec.server.host),
            now=when,
            days=spec.validity_days,
        )
        write_private(server / "server.key", key_pem(server_key))
        write_public(server / "server.crt", pem_of(server_cert))
        write_public(server / "ca.crt", pem_of(ca_cert))
        write_yaml(
            server / "server.yaml",
            {
                "federation": spec.name,
                "host": spec.server.host,
                "port": spec.server.port,
                "certificate": "server.crt",
                "private_key": "server.key",
                "ca": "ca.crt",
                "revocation_list": REVOKED,
                "roster": ROSTER,
                "crl": CRL,
            },
        )
        manifest = Manifest(
            federation=spec.name,
            host=spec.server.host,
            port=spec.server.port,
            validity_days=spec.validity_days,
            ca_serial=ca_cert.serial_number,
            server_serial=server_cert.serial_number,
        )
        for site in spec.sites:
            manifest.sites[site] = _write_site_kit(out, manifest, site, ca_key, ca_cert, when)
        write_revocation(out, manifest, ca_key, ca_cert, when)
        write_roster(out, manifest)
        manifest_path = save_manifest(out, manifest)  # last: its presence means the federation is complete
    except OSError as exc:
        raise ConfigError(f"cannot write the federation into {out}: {exc}") from None
    return ProvisionResult(
        out=out,
        ca_cert=out / "ca" / "ca.crt",
        server_kit=server,
        site_kits={site: out / "sites" / site for site in spec.sites},
        manifest=manifest_path,
    )


def add_site(out: Path, site: str, *, now: datetime | None = None) -> Path:
    """Sign a kit for a new site with the existing CA, record it in the manifest and return the kit folder."""
    when, out = _now(now), Path(out)
    name = check_site_name(site)
    ca_key, ca_cert = load_ca(out)
    manifest = load_manifest(out)
    for existing, record in manifest.sites.items():
        if existing.lower() == name.lower():
            raise ConfigError(f"site {existing!r} already exists in {out} ({record.status}); choose another name")
    try:
        manifest.sites[name] = _write_site_kit(out, manifest, name, ca_key, ca_cert, when)
        write_roster(out, manifest)
        save_manifest(out, manifest)
    except OSError as exc:
        raise ConfigError(f"cannot write the kit of site {name!r} into {out}: {exc}") from None
    return out / "sites" / name


def revoke_site(out: Path, site: str, reason: str = "", *, now: datetime | None = None) -> Path:
    """Mark ``site`` revoked, rewrite ``server/revoked.json`` and ``server/crl.pem``; return the list's path."""
    when, out = _now(now), Path(out)
    manifest = load_manifest(out)
    record = manifest.sites.get(site)
    if record is None:
        known = ", ".join(sorted(manifest.sites)) or "none"
        raise ConfigError(f"unknown site {site!r} in {out} (sites: {known})")
    if record.status == "revoked":
        raise ConfigError(f"site {site!r} was already revoked on {record.revoked_at:%Y-%m-%d}")
    ca_key, ca_cert = load_ca(out)
    record.status, record.revoked_at, record.reason = "revoked", when, reason.strip()
    try:
        path = write_revocation(out, manifest, ca_key, ca_cert, when)  # before the manifest, so a retry works
        save_manifest(out, manifest)
    except OSError as exc:
        raise ConfigError(f"cannot write the revocation list into {out}: {exc}") from None
    return path


def site_identity(
    cert_pem: bytes,
    ca_pem: bytes,
    *,
    revoked: Collection[int] = (),
    roster: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> str:
    """The site name proven by a peer certificate, or :class:`IdentityError` saying why there is none.

    Checks that the certificate was signed by the federation CA, is within its validity window at
    ``now``, is an end-entity certificate with the clientAuth extended key usage, is not among the
    ``revoked`` serial numbers, and names one site in its CN; with a ``roster`` (site -> serial), that the
    site is in it and this certificate is the one issued to it.
    """
    when = _now(now)
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise ConfigError(f"the federation CA certificate is not a PEM certificate: {exc}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise IdentityError("the peer certificate is not a PEM X.509 certificate") from None
    serial = serial_hex(cert.serial_number)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise IdentityError(
            f"certificate {serial} was not issued by this federation's CA (foreign CA: issuer "
            f"{cert.issuer.rfc4514_string()!r})"
        ) from None
    if not ca.not_valid_before_utc <= when <= ca.not_valid_after_utc:
        raise IdentityError(f"the federation CA is not valid at {when:%Y-%m-%d %H:%M} UTC (expired or not yet valid)")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca:
        raise IdentityError(f"certificate {serial} is a CA certificate, not a site certificate")
    if when < cert.not_valid_before_utc:
        raise IdentityError(
            f"certificate {serial} is not yet valid (valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC)"
        )
    if when > cert.not_valid_after_utc:
        raise IdentityError(f"certificate {serial} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise IdentityError(f"certificate {serial} has no clientAuth extended key usage: it is not a site certificate")
    if cert.serial_number in revoked:
        raise IdentityError(f"certificate {serial} has been revoked")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str) or not _NAME.fullmatch(names[0].value):
        raise IdentityError(f"certificate {serial} has no CN naming a site")
    name = names[0].value
    if roster is not None:
        if name not in roster:
            raise IdentityError(f"certificate {serial} names site {name!r}, which is not in this federation's roster")
        if roster[name] != cert.serial_number:
            raise IdentityError(
                f"certificate {serial} names site {name!r} but is not the certificate issued to it "
                f"({serial_hex(roster[name])})"
            )
    return name
