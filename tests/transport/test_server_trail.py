"""The server's trail: who joined, who came back, who was refused, each with its address and certificate."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from confide.provision import revoke_site
from confide.provision_kit import load_revoked
from tests.transport.hostile import LONG, provision_kits, serve, transfer, wait_until

LOGGER = "confide.transport.grpc_server"


def _serial(kits: Path, site: str) -> str:
    return f"{x509.load_pem_x509_certificate((kits / 'sites' / site / 'site.crt').read_bytes()).serial_number:X}"


def _lines(caplog: pytest.LogCaptureFixture, *parts: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if all(p in r.getMessage() for p in parts)]


def test_a_site_joining_and_rejoining_is_logged_with_its_address_and_certificate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a join said only the site's name, once; a site coming back (restarted, or after timing out) left
    no line at all."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    kits = provision_kits(tmp_path / "kits")
    fed = serve(kits, site_timeout_s=0.5)
    site = fed.hostile("site-1")  # a raw client: it calls only what the test says
    serial = _serial(kits, "site-1")
    try:
        site.join(b"{}", timeout=LONG)
        site.join(b"{}", timeout=LONG)  # the site restarted
        assert wait_until(lambda: fed.service.sites() == [])  # silent past the timeout
        site.heartbeat(b"{}", timeout=LONG)  # and back

        joined = _lines(caplog, "site site-1 joined from ipv4:127.0.0.1:", f"(certificate {serial})")
        again = _lines(caplog, "site site-1 rejoined from ipv4:127.0.0.1:", f"(certificate {serial}): joined again")
        back = _lines(caplog, "site site-1 rejoined from ipv4:127.0.0.1:", f"(certificate {serial}): back after")
    finally:
        site.close()
        fed.stop()

    assert (len(joined), len(again), len(back)) == (1, 1, 1), caplog.text


def test_refused_calls_are_logged_with_address_certificate_and_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a refusal named the certificate only where its reason happened to, and a certificate refused again
    and again wrote one line per call (a flood of the log); now the same refusal is logged once per 10 s."""
    kits = provision_kits(tmp_path / "kits")
    revoke_site(kits, "site-2", "laptop stolen")
    roster = {"site-1": int(_serial(kits, "site-1"), 16), "site-2": int(_serial(kits, "site-2"), 16)}
    fed = serve(kits, revoked=lambda: load_revoked(kits / "server" / "revoked.json"), roster=lambda: roster)
    codes = []
    try:
        for name in ("site-2", "site-3"):
            hostile = fed.hostile(name)
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as refused:
                    hostile.join(b"{}", timeout=LONG)
                codes.append(refused.value.code())
            hostile.close()
    finally:
        fed.stop()

    assert codes == [grpc.StatusCode.PERMISSION_DENIED] * 6
    revoked = _lines(caplog, "refused a connection from ipv4:127.0.0.1:", f"(certificate {_serial(kits, 'site-2')})")
    off_roster = _lines(caplog, "refused a connection from ipv4:127.0.0.1:", f"(certificate {_serial(kits, 'site-3')})")
    assert len(revoked) == 1 and "has been revoked" in revoked[0]
    assert len(off_roster) == 1 and "not in this federation's roster" in off_roster[0]


def test_a_sites_own_text_reaches_the_log_on_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: a task id holding a newline forged a second log line ("site site-2 joined ...")."""
    fed = serve(provision_kits(tmp_path / "kits"))
    site = fed.hostile("site-1")
    try:
        site.join(b"{}", timeout=LONG)
        forged = "t1\nsite site-2 joined from ipv4:6.6.6.6:1 (certificate 1)"

        answer = json.loads(site.push(transfer(forged, 10), timeout=LONG))
    finally:
        site.close()
        fed.stop()

    assert answer["reason"] == "round already closed"
    lines = _lines(caplog, "arrived after its round closed")
    assert len(lines) == 1 and "\n" not in lines[0] and "t1 site site-2 joined" in lines[0]
