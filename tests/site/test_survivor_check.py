"""The consistency check: a site unmasks only for the one survivor set it signed, and only with at least the
threshold of survivors' signatures over that same set, so a server cannot show sites different sets and unmask a
sum of fewer updates than the threshold."""

from __future__ import annotations

from dataclasses import dataclass, replace

from confide.privacy.secagg import SecAggServer, SurvivorCheck, SurvivorSignature, UnmaskRequest, UnmaskResponse
from confide.privacy.secagg_wire import SecureTrainIns, pack, pack_train, unpack, unpack_shares
from confide.records import Control, Failure, Record, TrainIns
from confide.sim_identities import SimFederation
from tests.site.test_signed_roster import AGG, MODEL, Site

TEN = [f"site-{i}" for i in range(10)]
FED10 = SimFederation.create(TEN)


@dataclass
class Masked:
    """Every site through advertise, share and train with an honest aggregator."""

    sites: dict[str, Site]
    server: SecAggServer


def _masked(names: list[str], federation: SimFederation, threshold: int) -> Masked:
    sites = {name: Site(name, federation) for name in names}
    server = SecAggServer(AGG, 3, threshold)
    roster = replace(server.roster([s.advertise() for s in sites.values()]), revocation_list=federation.revocation_list)
    bundles = [unpack_shares(s.ask(pack(1, roster)))[1] for s in sites.values()]  # type: ignore[arg-type]
    routed = server.route([share for bundle in bundles for share in bundle])
    for name, site in sites.items():
        reply = site.ask(pack_train(SecureTrainIns(TrainIns(1, MODEL, {}), AGG, tuple(routed[name]))))
        assert isinstance(reply, Control) and reply.topic == "secagg/masked", reply
    return Masked(sites, server)


def _sign(site: Site, survivors: tuple[str, ...], dropped: tuple[str, ...]) -> Record:
    return site.ask(pack(1, SurvivorCheck(AGG, survivors, dropped)))


def _signature(reply: Record) -> bytes:
    assert isinstance(reply, Control), reply
    return unpack(reply, SurvivorSignature).signature


def test_every_site_shown_the_same_survivors_unmasks() -> None:
    run = _masked(["a", "b", "c"], SimFederation.create(["a", "b", "c"]), 2)
    survivors, dropped = ("a", "b", "c"), ()
    signatures = tuple((name, _signature(_sign(site, survivors, dropped))) for name, site in run.sites.items())

    replies = [site.ask(pack(1, UnmaskRequest(AGG, survivors, dropped, signatures))) for site in run.sites.values()]

    assert all(isinstance(r, Control) and r.topic == "secagg/unmasked" for r in replies), replies
    assert [site.trained for site in run.sites.values()] == [[2], [2], [2]]  # told the verified threshold
    responses = [unpack(r, UnmaskResponse) for r in replies if isinstance(r, Control)]
    assert len(responses) == 3 and all(dict(r.self_mask_shares).keys() == {"a", "b", "c"} for r in responses)


def test_a_survivor_set_below_the_threshold_or_without_this_site_is_not_signed() -> None:
    run = _masked(["a", "b", "c"], SimFederation.create(["a", "b", "c"]), 2)

    below = _sign(run.sites["a"], ("a",), ("b", "c"))
    without = _sign(run.sites["b"], ("a", "c"), ("b",))

    assert isinstance(below, Failure) and "only 1 survivors, threshold is 2: refusing to unmask" in below.reason
    assert isinstance(without, Failure) and "does not list this site as a survivor" in without.reason


def test_split_views_gather_too_few_signatures_and_no_site_unmasks() -> None:
    """n = 10, t = 7. Each site is shown its own survivor set: the six sites of S plus itself (a site outside S is
    shown S, itself, and the other three outside S as dropped). Without the check, the answers would let the server
    unmask the sum of S alone (6 < t updates); with it, no set gathers 7 signatures and every site refuses."""
    run = _masked(TEN, FED10, 7)
    inside, outside = TEN[:6], TEN[6:]
    views: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for k, name in enumerate(TEN):
        kept = outside[k % 4] if name in inside else name
        views[name] = (tuple([*inside, kept]), tuple(o for o in outside if o != kept))
    signed = {name: _signature(_sign(run.sites[name], *views[name])) for name in TEN}

    replies = {}
    for name, (survivors, dropped) in views.items():
        same_view = tuple((other, signed[other]) for other in TEN if views[other] == views[name])
        replies[name] = run.sites[name].ask(pack(1, UnmaskRequest(AGG, survivors, dropped, same_view)))

    assert max(sum(views[o] == views[n] for o in TEN) for n in TEN) < 7  # no set was shown to 7 sites
    for name, reply in replies.items():
        assert isinstance(reply, Failure) and "survivors signed the survivor set, threshold is 7" in reply.reason, name


def test_signatures_over_other_sets_or_by_strangers_are_refused() -> None:
    names = ["a", "b", "c", "d"]
    run = _masked(names, SimFederation.create(names), 3)
    survivors, dropped = ("a", "b", "c"), ("d",)
    mine = {n: _signature(_sign(run.sites[n], survivors, dropped)) for n in ("a", "b")}
    other = _signature(_sign(run.sites["c"], ("a", "b", "c", "d"), ()))  # c was shown everyone surviving

    forged = run.sites["a"].ask(pack(1, UnmaskRequest(AGG, survivors, dropped, (*mine.items(), ("c", other)))))
    stranger = run.sites["b"].ask(pack(1, UnmaskRequest(AGG, survivors, dropped, (*mine.items(), ("d", other)))))

    assert isinstance(forged, Failure) and "survivor signature of 'c' does not verify" in forged.reason
    assert isinstance(stranger, Failure) and "signed by 'd', which is not one of its survivors" in stranger.reason


def test_a_site_signs_one_survivor_set_only() -> None:
    run = _masked(["a", "b", "c"], SimFederation.create(["a", "b", "c"]), 2)
    _sign(run.sites["a"], ("a", "b", "c"), ())

    again = _sign(run.sites["a"], ("a", "b"), ("c",))

    assert isinstance(again, Failure) and "needs an aggregation at 'masked'" in again.reason


def test_an_unmask_request_for_another_set_than_the_one_signed_is_refused() -> None:
    run = _masked(["a", "b", "c"], SimFederation.create(["a", "b", "c"]), 2)
    other = (("a", "b"), ("c",))
    _sign(run.sites["a"], ("a", "b", "c"), ())
    signatures = (("b", _signature(_sign(run.sites["b"], *other))),)

    reply = run.sites["a"].ask(pack(1, UnmaskRequest(AGG, *other, signatures)))

    assert isinstance(reply, Failure)
    assert "other survivors or dropped participants than the set this site signed" in reply.reason
