from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from confide.errors import ConfigError
from confide.provision import (
    IdentityError,
    add_site,
    load_federation,
    parse_federation,
    provision,
    revoke_site,
    site_identity,
)
from confide.provision_kit import load_revoked

SPEC = {"name": "fed", "server": {"host": "fl.example.org", "port": 8443}, "sites": ["site-1", "site-2", "site-3"]}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fed") / "out"
    provision(parse_federation(SPEC), out)
    return out


def _ca(out: Path) -> bytes:
    return (out / "ca" / "ca.crt").read_bytes()


def test_kits_hold_keys_readable_by_owner_only(fed: Path) -> None:
    keys = [fed / "ca" / "ca.key", fed / "server" / "server.key", *(fed / "sites").glob("*/site.key")]

    assert len(keys) == 5
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for kit in ("site-1", "site-2", "site-3"):
        assert {p.name for p in (fed / "sites" / kit).iterdir()} >= {"site.key", "site.crt", "ca.crt", "site.yaml"}


def test_site_identity_is_the_name_in_the_verified_certificate(fed: Path) -> None:
    cert = (fed / "sites" / "site-2" / "site.crt").read_bytes()

    assert site_identity(cert, _ca(fed)) == "site-2"


def test_server_certificate_names_the_host_and_loopback(fed: Path) -> None:
    cert = x509.load_pem_x509_certificate((fed / "server" / "server.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert {"fl.example.org", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}


def test_server_kit_loads_into_grpc_credentials(fed: Path) -> None:
    server = fed / "server"

    credentials = grpc.ssl_server_credentials(
        [((server / "server.key").read_bytes(), (server / "server.crt").read_bytes())],
        root_certificates=(server / "ca.crt").read_bytes(),
        require_client_auth=True,
    )

    assert credentials is not None


def test_certificate_of_another_federation_is_refused(fed: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    provision(parse_federation({**SPEC, "name": "other"}), other)

    with pytest.raises(IdentityError, match="CA"):
        site_identity((other / "sites" / "site-1" / "site.crt").read_bytes(), _ca(fed))


def test_expired_and_server_certificates_are_refused(fed: Path) -> None:
    cert = (fed / "sites" / "site-1" / "site.crt").read_bytes()

    with pytest.raises(IdentityError, match="expire"):
        site_identity(cert, _ca(fed), now=datetime.now(UTC) + timedelta(days=4000))
    with pytest.raises(IdentityError):
        site_identity((fed / "server" / "server.crt").read_bytes(), _ca(fed))  # not a client certificate


def test_revoked_site_is_refused_and_recorded(tmp_path: Path) -> None:
    out = tmp_path / "fed"
    provision(parse_federation(SPEC), out)
    cert = (out / "sites" / "site-3" / "site.crt").read_bytes()

    path = revoke_site(out, "site-3", "decommissioned")

    revoked = load_revoked(path)
    with pytest.raises(IdentityError, match="revoked"):
        site_identity(cert, _ca(out), revoked=revoked)
    manifest = json.loads((out / "federation.json").read_text())
    assert manifest["sites"]["site-3"]["status"] == "revoked"
    assert manifest["sites"]["site-1"]["status"] == "active"
    with pytest.raises(ConfigError):
        revoke_site(out, "site-9")


def test_add_site_signs_a_new_kit_and_refuses_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "fed"
    provision(parse_federation(SPEC), out)

    kit = add_site(out, "site-4")

    assert site_identity((kit / "site.crt").read_bytes(), _ca(out)) == "site-4"
    with pytest.raises(ConfigError):
        add_site(out, "site-4")
    with pytest.raises(ConfigError):
        add_site(tmp_path / "nowhere", "site-5")


def test_provisioning_twice_into_one_folder_is_refused(fed: Path) -> None:
    with pytest.raises(ConfigError):
        provision(parse_federation(SPEC), fed)


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({**SPEC, "sites": ["site-1", "site-1"]}, "site-1"),
        ({**SPEC, "sites": ["../evil"]}, "sites"),
        ({**SPEC, "colour": "red"}, "colour"),
        ({**SPEC, "server": {"host": "fl.example.org", "port": 70000}}, "port"),
    ],
)
def test_bad_federation_file_names_the_field(document: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_federation(document)


def test_federation_file_is_read_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "federation.yaml"
    path.write_text("name: fed\nserver: {host: 10.0.0.5, port: 9000}\nsites: [a, b]\n")

    spec = load_federation(path)

    assert spec.sites == ["a", "b"] and spec.server.port == 9000
