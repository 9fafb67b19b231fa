from __future__ import annotations

import json
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from confide.errors import ConfigError
from confide.provision import (
    FederationSpec,
    IdentityError,
    add_site,
    load_federation,
    load_revoked,
    parse_federation,
    provision,
    revoke_site,
    site_identity,
)

HOST = "fl.example-hospital.org"
SITES = ["site-1", "site-2", "site-3"]
DOCUMENT = {"name": "brain-fed", "server": {"host": HOST, "port": 8443}, "sites": SITES}


def _spec() -> FederationSpec:
    return parse_federation(DOCUMENT)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A federation provisioned now; the tests using it only read it."""
    out = tmp_path_factory.mktemp("fed") / "out"
    provision(_spec(), out)
    return out


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _identity(out: Path, site: str, **kwargs: object) -> str:
    cert = _read(out / "sites" / site / "site.crt")
    return site_identity(cert, _read(out / "ca" / "ca.crt"), **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- layout


def test_provision_writes_every_kit_with_private_keys_0600(fed: Path) -> None:
    keys = [fed / "ca" / "ca.key", fed / "server" / "server.key", *(fed / "sites" / s / "site.key" for s in SITES)]
    public = ["ca/ca.crt", "server/server.crt", "server/ca.crt", "server/server.yaml", "server/revoked.json"]
    public += ["server/crl.pem", "federation.json"]
    public += [f"sites/{s}/{f}" for s in SITES for f in ("site.crt", "ca.crt", "site.yaml")]
    kits = [fed / "ca", fed / "server", *(fed / "sites" / s for s in SITES)]

    missing = [p for p in public if not (fed / p).is_file()]
    key_modes = {p.name: oct(_mode(p)) for p in keys}
    kit_modes = {p.name: oct(_mode(p)) for p in kits}

    assert missing == []
    assert set(key_modes.values()) == {"0o600"}, key_modes
    assert set(kit_modes.values()) == {"0o700"}, kit_modes


def test_site_certificate_names_the_site_and_is_signed_by_the_ca(fed: Path) -> None:
    certs = {s: _cert(fed / "sites" / s / "site.crt") for s in SITES}

    common_names = {s: c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value for s, c in certs.items()}
    usages = {s: list(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) for s, c in certs.items()}
    identities = {s: _identity(fed, s) for s in SITES}

    assert common_names == {s: s for s in SITES}
    assert usages == {s: [ExtendedKeyUsageOID.CLIENT_AUTH] for s in SITES}
    assert identities == {s: s for s in SITES}


def test_server_certificate_covers_the_host_and_loopback(fed: Path) -> None:
    cert = _cert(fed / "server" / "server.crt")

    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)

    assert HOST in dns and "localhost" in dns and "127.0.0.1" in ips
    assert usages == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_kit_files_name_the_server_and_the_revocation_list(fed: Path) -> None:
    site = yaml.safe_load((fed / "sites" / "site-2" / "site.yaml").read_text())
    server = yaml.safe_load((fed / "server" / "server.yaml").read_text())

    revocation_list = fed / "server" / server["revocation_list"]

    assert site["site"] == "site-2" and site["federation"] == "brain-fed" and site["server"] == f"{HOST}:8443"
    assert server["federation"] == "brain-fed" and server["port"] == 8443
    assert load_revoked(revocation_list) == frozenset()


def test_manifest_lists_every_site_with_its_serial(fed: Path) -> None:
    manifest = json.loads((fed / "federation.json").read_text())

    serials = {s: _cert(fed / "sites" / s / "site.crt").serial_number for s in SITES}

    assert {s: r["serial"] for s, r in manifest["sites"].items()} == serials
    assert {r["status"] for r in manifest["sites"].values()} == {"active"}


# -------------------------------------------------------------------------------------------- identity


def test_certificate_from_a_foreign_ca_is_refused(fed: Path, tmp_path: Path) -> None:
    provision(_spec(), tmp_path / "other")  # same federation name, so only the signature tells them apart
    foreign = _read(tmp_path / "other" / "sites" / "site-1" / "site.crt")

    with pytest.raises(IdentityError, match="CA"):
        site_identity(foreign, _read(fed / "ca" / "ca.crt"))


@pytest.mark.parametrize(("shift", "why"), [(timedelta(days=3 * 365), "expired"), (-timedelta(days=1), "not yet")])
def test_certificate_outside_its_validity_window_is_refused(fed: Path, shift: timedelta, why: str) -> None:
    now = datetime.now(UTC) + shift

    with pytest.raises(IdentityError, match=why):
        _identity(fed, "site-1", now=now)


@pytest.mark.parametrize(
    ("path", "why"), [("server/server.crt", "no clientAuth"), ("ca/ca.crt", "is a CA certificate")]
)
def test_server_and_ca_certificates_are_not_site_identities(fed: Path, path: str, why: str) -> None:
    cert = _read(fed / path)

    with pytest.raises(IdentityError, match=why):
        site_identity(cert, _read(fed / "ca" / "ca.crt"))


def test_naive_now_is_refused(fed: Path) -> None:
    with pytest.raises(ConfigError, match="timezone"):
        _identity(fed, "site-1", now=datetime(2030, 1, 1))


# ------------------------------------------------------------------------------------ revoke, add, rerun


def test_revoked_site_is_refused_and_recorded(tmp_path: Path) -> None:
    out = tmp_path / "fed"
    provision(_spec(), out)
    serial = _cert(out / "sites" / "site-2" / "site.crt").serial_number

    listing = revoke_site(out, "site-2", reason="laptop stolen")

    revoked = load_revoked(listing)
    with pytest.raises(IdentityError, match="revoked"):
        _identity(out, "site-2", revoked=revoked)
    assert _identity(out, "site-1", revoked=revoked) == "site-1"
    record = json.loads((out / "federation.json").read_text())["sites"]["site-2"]
    assert record["status"] == "revoked" and record["reason"] == "laptop stolen" and record["revoked_at"]
    crl = x509.load_pem_x509_crl(_read(out / "server" / "crl.pem"))
    assert crl.is_signature_valid(_cert(out / "ca" / "ca.crt").public_key())  # type: ignore[arg-type]
    assert [entry.serial_number for entry in crl] == [serial]


def test_revoking_an_unknown_or_already_revoked_site_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "fed"
    provision(_spec(), out)
    revoke_site(out, "site-1")

    with pytest.raises(ConfigError, match="unknown site 'site-9'"):
        revoke_site(out, "site-9")
    with pytest.raises(ConfigError, match="already revoked"):
        revoke_site(out, "site-1")


def test_add_site_signs_a_working_kit_and_refuses_a_duplicate(tmp_path: Path) -> None:
    out = tmp_path / "fed"
    provision(_spec(), out)

    kit = add_site(out, "site-4")

    assert _identity(out, "site-4") == "site-4"
    assert _mode(kit / "site.key") == 0o600 and _mode(kit) == 0o700
    assert sorted(json.loads((out / "federation.json").read_text())["sites"]) == [*SITES, "site-4"]
    with pytest.raises(ConfigError, match="already exists"):
        add_site(out, "SITE-4")


@pytest.mark.parametrize("name", ["..", "site 5", ".hidden", "-rf", ""])
def test_add_site_refuses_an_invalid_name(tmp_path: Path, name: str) -> None:
    out = tmp_path / "fed"
    provision(_spec(), out)

    with pytest.raises(ConfigError, match="site name"):
        add_site(out, name)


def test_add_site_without_a_ca_names_the_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no federation CA at .*ca\.key"):
        add_site(tmp_path / "empty", "site-1")


def test_provisioning_again_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "fed"
    provision(_spec(), out)
    ca_before = _read(out / "ca" / "ca.crt")

    with pytest.raises(ConfigError, match="already holds a federation"):
        provision(_spec(), out)
    assert _read(out / "ca" / "ca.crt") == ca_before


# ------------------------------------------------------------------------------------- federation file


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"colour": "blue"}, "colour"),
        ({"sites": ["site-1", "bad name"]}, "sites.1"),
        ({"sites": ["site-1", "site-2", "site-1"]}, "sites: Value error, duplicate site 'site-1'"),
        ({"server": {"host": "fl.example.org", "port": 0}}, "server.port"),
        ({"server": {"host": "0.0.0.0", "port": 8443}}, "server.host"),
        ({"server": {"host": "not a host", "port": 8443}}, "server.host"),
        ({"server": {"host": "fl.example.org", "port": 8443, "tls": False}}, "server.tls"),
    ],
)
def test_bad_federation_file_names_the_field(tmp_path: Path, change: dict[str, object], named: str) -> None:
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump({**DOCUMENT, **change}))

    with pytest.raises(ConfigError, match=named.replace(".", r"\.")) as caught:
        load_federation(path)
    assert str(path) in str(caught.value)


def test_federation_file_is_read_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump({**DOCUMENT, "validity_days": 30}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites: [unclosed")

    spec = load_federation(path)

    assert spec.sites == SITES and spec.server.host == HOST and spec.validity_days == 30
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_federation(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_federation(tmp_path / "missing.yaml")


# ------------------------------------------------------------------------------------------------ TLS


def test_server_kit_loads_into_grpc_credentials(fed: Path) -> None:
    grpc = pytest.importorskip("grpc")
    server = fed / "server"

    credentials = grpc.ssl_server_credentials(
        [(_read(server / "server.key"), _read(server / "server.crt"))],
        root_certificates=_read(server / "ca.crt"),
        require_client_auth=True,
    )

    assert isinstance(credentials, grpc.ServerCredentials)


def _handshake(server_kit: Path, site_kit: Path, hostname: str) -> bytes:
    """Mutual TLS between the two kits in memory (no socket); the server's view of the peer certificate."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server_kit / "server.crt", server_kit / "server.key")
    server_ctx.load_verify_locations(server_kit / "ca.crt")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_cert_chain(site_kit / "site.crt", site_kit / "site.key")
    client_ctx.load_verify_locations(site_kit / "ca.crt")
    for ctx in (server_ctx, client_ctx):
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_server, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(to_server, from_server, server_side=True)
    client = client_ctx.wrap_bio(to_client, from_client, server_hostname=hostname)
    pending = [client, server]
    for _ in range(10):
        for end in list(pending):
            try:
                end.do_handshake()
                pending.remove(end)
            except ssl.SSLWantReadError:
                pass
        to_server.write(from_client.read())
        to_client.write(from_server.read())
        if not pending:
            break
    peer = server.getpeercert(binary_form=True)
    assert peer is not None
    return peer


@pytest.mark.parametrize("hostname", [HOST, "localhost", "127.0.0.1"])
def test_site_and_server_kits_complete_a_mutual_tls_handshake(fed: Path, hostname: str) -> None:
    peer_der = _handshake(fed / "server", fed / "sites" / "site-3", hostname)

    peer_pem = x509.load_der_x509_certificate(peer_der).public_bytes(Encoding.PEM)

    assert site_identity(peer_pem, _read(fed / "ca" / "ca.crt")) == "site-3"


def test_server_refuses_a_site_certificate_from_a_foreign_ca_in_the_handshake(fed: Path, tmp_path: Path) -> None:
    provision(_spec(), tmp_path / "other")
    impostor = tmp_path / "impostor"  # a foreign site key and certificate, but it trusts the real server
    impostor.mkdir()
    for name in ("site.crt", "site.key"):
        (impostor / name).write_bytes(_read(tmp_path / "other" / "sites" / "site-1" / name))
    (impostor / "ca.crt").write_bytes(_read(fed / "ca" / "ca.crt"))

    with pytest.raises(ssl.SSLError, match="certificate verify failed"):
        _handshake(fed / "server", impostor, HOST)


# ---------------------------------------------------------------------------------------------- roster


def _signed_by_the_ca(out: Path, name: str) -> bytes:
    """A client certificate the federation's CA signed outside provisioning (a key that leaked, a tool misused)."""
    from confide.provision_kit import CLIENT_AUTH, cert_pem, issue, load_ca

    ca_key, ca_cert = load_ca(out)
    _, cert = issue(
        ca_key,
        ca_cert,
        federation="brain-fed",
        common_name=name,
        usage=CLIENT_AUTH,
        alt_names=[],
        now=datetime.now(UTC),
        days=30,
    )
    return cert_pem(cert)


def test_the_roster_admits_provisioned_sites_and_refuses_any_other_name_or_certificate(tmp_path: Path) -> None:
    from confide.provision_kit import load_roster

    out = tmp_path / "fed"
    provision(_spec(), out)
    roster = load_roster(out / "server" / "roster.json")
    ca = _read(out / "ca" / "ca.crt")

    assert sorted(roster) == SITES and _identity(out, "site-1", roster=roster) == "site-1"
    with pytest.raises(IdentityError, match="not in this federation's roster"):
        site_identity(_signed_by_the_ca(out, "intruder"), ca, roster=roster)
    with pytest.raises(IdentityError, match="not the certificate issued to it"):
        site_identity(_signed_by_the_ca(out, "site-2"), ca, roster=roster)
    assert site_identity(_signed_by_the_ca(out, "intruder"), ca) == "intruder"  # what the roster prevents


def test_adding_a_site_adds_it_to_the_roster(tmp_path: Path) -> None:
    from confide.provision_kit import load_roster

    out = tmp_path / "fed"
    provision(_spec(), out)

    add_site(out, "site-4")

    roster = load_roster(out / "server" / "roster.json")
    assert _identity(out, "site-4", roster=roster) == "site-4"
    assert yaml.safe_load((out / "server" / "server.yaml").read_text())["roster"] == "roster.json"


def test_a_malformed_roster_is_a_clear_error(tmp_path: Path) -> None:
    from confide.provision_kit import load_roster

    path = tmp_path / "roster.json"
    path.write_text('{"sites": {"site-1": "not a serial"}}')

    with pytest.raises(ConfigError, match=r"roster\.json is invalid"):
        load_roster(path)


def test_every_site_kit_holds_the_federations_revocation_list_as_it_changes(tmp_path: Path) -> None:
    """Sites check secure-aggregation rosters against it: provision, revoke_site and add_site keep kits current."""
    out = tmp_path / "fed"
    provision(_spec(), out)
    before = [_read(out / "sites" / s / "crl.pem") for s in SITES]
    serial = _cert(out / "sites" / "site-2" / "site.crt").serial_number

    revoke_site(out, "site-2")
    after = [_read(out / "sites" / s / "crl.pem") for s in SITES]
    added = add_site(out, "site-4")

    server_list = _read(out / "server" / "crl.pem")
    assert before == [before[0]] * 3 and before[0] != server_list
    assert after == [server_list] * 3 and _read(added / "crl.pem") == server_list
    assert [entry.serial_number for entry in x509.load_pem_x509_crl(after[0])] == [serial]
    assert yaml.safe_load((added / "site.yaml").read_text())["revocation_list"] == "crl.pem"
