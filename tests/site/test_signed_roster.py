"""A server that makes the roster cannot slip its own clients in: a site shares only with verified sites."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from confide import serde
from confide.deploy_site import kit_identity
from confide.errors import ConfigError
from confide.privacy.secagg import Advertisement, Roster, SecAggClient, default_threshold
from confide.privacy.secagg_identity import SiteIdentity, sign_advertisement
from confide.privacy.secagg_wire import SecAggSetup, SecureTrainIns, pack, pack_train, unpack, unpack_shares
from confide.provision import parse_federation, provision, revoke_site
from confide.records import Control, Failure, Record, TrainIns, TrainRes
from confide.sim_identities import SimFederation
from confide.site.secure import SecureSite
from tests.helpers import arrays

AGG = "round-1-signed-roster"
MODEL = arrays(w=[0.0, 0.0, 0.0])
FED = SimFederation.create(["a", "b", "c", "d", "e"], revoked=["e"])
OTHER = SimFederation.create(["a", "b", "c", "d"], name="another-federation")


class Site:
    """A SecureSite under test that records every call of its training callback."""

    def __init__(self, name: str = "a", federation: SimFederation = FED, **kwargs: object) -> None:
        self.trained: list[int | None] = []
        identity = federation.identities[name] if federation is not None else None
        self.site = SecureSite(name, self._train, identity=identity, **kwargs)  # type: ignore[arg-type]

    def _train(self, ins: TrainIns, contributors: int | None) -> TrainRes:
        self.trained.append(contributors)
        return TrainRes(ins.round, arrays(w=[0.1, 0.2, 0.3]), num_examples=3)

    def ask(self, control: Control) -> Record:
        return serde.decode(serde.encode(self.site.answer(serde.decode_as(serde.encode(control), Control))))

    def advertise(self, aggregation_id: str = AGG, round: int = 1) -> Advertisement:
        reply = self.ask(pack(round, SecAggSetup(aggregation_id, 3, 2.0**20, 4.0)))
        assert isinstance(reply, Control), reply
        return unpack(reply, Advertisement)


def _genuine(name: str, federation: SimFederation = FED, aggregation_id: str = AGG, round: int = 1) -> Advertisement:
    """The advertisement a real site of ``federation`` signs for this aggregation and round."""
    return Site(name, federation).advertise(aggregation_id, round)


def _roster(*ads: Advertisement, threshold: int | None = None, crl: bytes = FED.revocation_list) -> Roster:
    ordered = tuple(sorted(ads, key=lambda ad: ad.sender))
    return Roster(AGG, threshold or default_threshold(len(ordered)), ordered, crl)


def _self_signed(name: str) -> Advertisement:
    """A client the server runs itself, with a certificate it signed itself under a site's name."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    forger = SiteIdentity(name, key, cert, cert)
    return sign_advertisement(forger, SecAggClient(name, AGG, 3).advertise(), 1)


def _foreign_keys(name: str) -> Advertisement:
    """A real site's certificate and signature, with keys the server made (it cannot sign them)."""
    keys = SecAggClient(name, AGG, 3).advertise()
    return replace(_genuine(name), c_public=keys.c_public, s_public=keys.s_public)


def _replayed_from_another_aggregation(name: str) -> Advertisement:
    return replace(_genuine(name, aggregation_id="round-0-earlier"), aggregation_id=AGG)


def _replayed_from_another_round(name: str) -> Advertisement:
    return _genuine(name, round=0)  # the same aggregation id, signed in round 0; the site under test is in round 1


def _from_another_ca(name: str) -> Advertisement:
    return _genuine(name, OTHER)


def _under_another_name(name: str) -> Advertisement:
    """Site "c" (its real key and certificate) signing keys advertised as ``name``."""
    as_other = replace(FED.identities["c"], name=name)
    return sign_advertisement(as_other, SecAggClient(name, AGG, 3).advertise(), 1)


def _shared(reply: Record) -> bool:
    return isinstance(reply, Control) and reply.topic == "secagg/shares"


def _assert_refused_and_shared_nothing(site: Site, reply: Record, *reasons: str) -> None:
    assert isinstance(reply, Failure) and reply.kind == "refused", reply
    for reason in reasons:
        assert reason in reply.reason, reply.reason
    later = site.ask(pack_train(SecureTrainIns(TrainIns(1, MODEL, {}), AGG, ())))
    assert isinstance(later, Failure) and "none under way" in later.reason  # its part in the aggregation ended
    assert site.trained == []


def test_a_roster_of_verified_sites_is_shared_with_and_trains_for_its_threshold() -> None:
    site = Site()
    mine = site.advertise()
    roster = _roster(mine, _genuine("b"), _genuine("c"), _genuine("d"))

    reply = site.ask(pack(1, roster))

    assert _shared(reply)
    assert isinstance(reply, Control) and len(unpack_shares(reply)[1]) == 4


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (_self_signed, "was not issued by this federation's CA"),
        (_from_another_ca, "was not issued by this federation's CA"),
        (_foreign_keys, "signature over its keys does not verify"),
        (_replayed_from_another_aggregation, "signature over its keys does not verify"),
        (_replayed_from_another_round, "signature over its keys does not verify"),
        (_under_another_name, "presents the certificate of site 'c'"),
    ],
)
def test_a_server_that_inserts_clients_of_its_own_is_refused(forge: object, reason: str) -> None:
    """One honest site among clients the server runs: the site names the first fake member and shares nothing."""
    site = Site()
    mine = site.advertise()
    roster = _roster(mine, forge("b"), forge("d"))  # type: ignore[operator]

    reply = site.ask(pack(1, roster))

    _assert_refused_and_shared_nothing(site, reply, "roster member 'b'", reason)


def test_a_revoked_sites_certificate_in_the_roster_is_refused() -> None:
    site = Site()
    mine = site.advertise()
    roster = _roster(mine, _genuine("b"), _genuine("e"))

    reply = site.ask(pack(1, roster))

    _assert_refused_and_shared_nothing(site, reply, "roster member 'e'", "has been revoked")


def test_a_revocation_list_the_ca_did_not_sign_or_none_at_all_is_refused() -> None:
    forged, missing = Site(), Site()
    ads = _genuine("b"), _genuine("c")

    forged_reply = forged.ask(pack(1, _roster(forged.advertise(), *ads, crl=OTHER.revocation_list)))
    missing_reply = missing.ask(pack(1, _roster(missing.advertise(), *ads, crl=b"")))

    _assert_refused_and_shared_nothing(forged, forged_reply, "the revocation list the server sent", "not issued by")
    _assert_refused_and_shared_nothing(missing, missing_reply, "no revocation list signed by the federation CA")


def test_a_member_listed_twice_is_refused() -> None:
    site = Site()
    mine, b = site.advertise(), _genuine("b")
    roster = Roster(AGG, 3, (mine, b, b), FED.revocation_list)

    reply = site.ask(pack(1, roster))

    _assert_refused_and_shared_nothing(site, reply, "roster member 'b' is listed twice")


def test_a_roster_below_the_sites_minimum_is_refused() -> None:
    site = Site(min_roster=4)
    roster = _roster(site.advertise(), _genuine("b"), _genuine("c"))

    reply = site.ask(pack(1, roster))

    _assert_refused_and_shared_nothing(site, reply, "holds 3 verified site(s)", "needs at least 4")


def test_a_threshold_below_the_sites_minimum_is_accepted_and_charged_for() -> None:
    """Four verified sites, but a threshold of 3 lets the server unmask a sum of 3: the site shares (its ledger
    charges its noise for three shares, see tests/server/test_secure_round.py), rather than refusing the round."""
    site = Site(min_roster=4)
    roster = _roster(site.advertise(), _genuine("b"), _genuine("c"), _genuine("d"), threshold=3)

    shared = site.ask(pack(1, roster))

    assert isinstance(shared, Control), shared


def test_a_site_without_an_identity_refuses_at_once() -> None:
    site = SecureSite("a", lambda ins, contributors: Failure(ins.round, "unused"))

    reply = site.answer(pack(1, SecAggSetup(AGG, 3, 2.0**20, 4.0)))

    assert isinstance(reply, Failure) and reply.kind == "refused" and "has no identity" in reply.reason


def test_an_aggregation_id_is_joined_once_only() -> None:
    site = Site()
    site.advertise()

    again = site.ask(pack(2, SecAggSetup(AGG, 3, 2.0**20, 4.0)))

    assert isinstance(again, Failure) and f"aggregation {AGG!r} was run before" in again.reason


def test_bad_settings_are_refused_when_the_site_is_made() -> None:
    with pytest.raises(ConfigError, match="min_roster of site 'a' must be an integer >= 1"):
        SecureSite("a", lambda ins, contributors: Failure(ins.round, "unused"), min_roster=0)
    with pytest.raises(ConfigError, match="given the identity of site 'b'"):
        SecureSite("a", lambda ins, contributors: Failure(ins.round, "unused"), identity=FED.identities["b"])


def test_a_deployed_site_keeps_the_revocations_of_its_kit_when_the_server_sends_an_older_list(
    tmp_path: Path,
) -> None:
    """The server replays the revocation list from before site-3 was revoked; the kit's newer list wins."""
    spec = parse_federation({"name": "fed", "server": {"host": "127.0.0.1", "port": 8443}, "sites": ["a", "b", "c"]})
    provision(spec, tmp_path)
    stale = (tmp_path / "server" / "crl.pem").read_bytes()
    revoke_site(tmp_path, "c")
    kits = {name: kit_identity(tmp_path / "sites" / name) for name in ("a", "b", "c")}
    sites = {name: SecureSite(name, lambda ins, n: Failure(ins.round, "unused"), identity=kits[name]) for name in kits}
    ads = [unpack(sites[n].answer(pack(1, SecAggSetup(AGG, 3, 2.0**20, 4.0))), Advertisement) for n in kits]  # type: ignore[arg-type]
    roster = _roster(*ads, crl=stale)

    reply = sites["a"].answer(pack(1, roster))

    assert kits["a"].revocation_list and kits["a"].revocation_list != stale
    assert isinstance(reply, Failure) and "roster member 'c'" in reply.reason and "revoked" in reply.reason


def test_a_kit_identity_that_does_not_hold_together_is_refused(tmp_path: Path) -> None:
    spec = parse_federation({"name": "fed", "server": {"host": "127.0.0.1", "port": 8443}, "sites": ["a", "b"]})
    provision(spec, tmp_path)
    swapped, renamed = tmp_path / "sites" / "a", tmp_path / "sites" / "b"
    (swapped / "site.crt").write_bytes((renamed / "site.crt").read_bytes())
    config = (renamed / "site.yaml").read_text()
    (renamed / "site.yaml").write_text(config.replace("site: b", "site: a"))

    with pytest.raises(ConfigError, match="usable site identity: site 'a': its private key is not the key of"):
        kit_identity(swapped)
    with pytest.raises(ConfigError, match="is for site 'a' but its certificate names site 'b'"):
        kit_identity(renamed)
