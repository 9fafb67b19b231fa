"""A site's side of secure aggregation: steps in order only, nothing in the clear, nothing sparse."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from confide import serde
from confide.privacy.secagg import Advertisement, EncryptedShare, Roster, SecAggClient, SecAggServer, UnmaskRequest
from confide.privacy.secagg_identity import sign_advertisement
from confide.privacy.secagg_wire import (
    MaskedTrainRes,
    SecAggSetup,
    SecureTrainIns,
    pack,
    pack_train,
    unpack,
    unpack_shares,
)
from confide.records import Arrays, Control, Failure, Record, SparseArrays, TrainIns, TrainRes
from confide.sim_identities import SimFederation
from confide.site.runner import SiteRunner
from confide.site.secure import SecureSite, Train
from tests.helpers import QuadraticTask, arrays

AGG = "round-1-site-test"
MODEL = arrays(w=[0.0, 0.0, 0.0])
SETUP = SecAggSetup(AGG, 3, 2.0**20, 4.0)
FED = SimFederation.create(["a", "b", "c", "d"])


def _site(train: Train) -> SecureSite:
    return SecureSite("a", train, identity=FED.identities["a"])


def _signed(client: SecAggClient, round: int = 1) -> Advertisement:
    """A peer's advertisement, signed with its identity in FED."""
    return sign_advertisement(FED.identities[client.name], client.advertise(), round)


def _ask(site: SecureSite | SiteRunner, control: Control) -> Record:
    if isinstance(site, SiteRunner):
        return serde.decode(site.handle(serde.encode(control)))
    return serde.decode(serde.encode(site.answer(serde.decode_as(serde.encode(control), Control))))


@dataclass
class AtTrain:
    site: SecureSite
    peer: SecAggClient
    server: SecAggServer
    shares: tuple[EncryptedShare, ...]


def _at_train_step(train: Callable[[TrainIns, int | None], TrainRes | Failure]) -> AtTrain:
    """Site "a" (under test) and a peer "b" through advertise and share."""
    site = _site(train)
    peer = SecAggClient("b", AGG, 3, scale=SETUP.scale, clip_range=SETUP.clip_range)
    server = SecAggServer(AGG, 3, 2, scale=SETUP.scale, clip_range=SETUP.clip_range)
    advert = _ask(site, pack(1, SETUP))
    assert isinstance(advert, Control)
    roster = server.roster([unpack(advert, Advertisement), _signed(peer)])
    roster = replace(roster, revocation_list=FED.revocation_list)
    shared = _ask(site, pack(1, roster))
    assert isinstance(shared, Control)
    routed = server.route([*unpack_shares(shared)[1], *peer.share(roster)])
    return AtTrain(site, peer, server, tuple(routed["a"]))


def _train_message(at: AtTrain, round: int = 1) -> Control:
    return pack_train(SecureTrainIns(TrainIns(round, MODEL, {"lr": 1.0}), AGG, at.shares))


def test_a_site_that_requires_secure_aggregation_refuses_a_plain_round() -> None:
    runner = SiteRunner("a", QuadraticTask(arrays(w=[1.0]), 5), secure_aggregation=True)

    reply = serde.decode(runner.handle(serde.encode(TrainIns(round=1, arrays=arrays(w=[0.0])))))

    assert isinstance(reply, Failure) and reply.kind == "refused"
    assert "requires secure aggregation" in reply.reason


def test_steps_out_of_order_are_refused() -> None:
    runner = SiteRunner("a", QuadraticTask(arrays(w=[1.0, 1.0, 1.0]), 5), identity=FED.identities["a"])
    early_unmask = pack(1, UnmaskRequest(AGG, ("a", "b"), ()))

    refused = _ask(runner, early_unmask)
    _ask(runner, pack(1, SETUP))
    skipped_share = _ask(runner, pack_train(SecureTrainIns(TrainIns(1, MODEL, {}), AGG, ())))

    assert isinstance(refused, Failure) and refused.kind == "refused" and "out of order" in refused.reason
    assert isinstance(skipped_share, Failure) and "needs an aggregation at 'shared'" in skipped_share.reason


def test_a_roster_with_a_threshold_of_half_or_less_is_refused() -> None:
    site = _site(lambda ins, _k=None: Failure(ins.round, "unused"))
    advert = _ask(site, pack(1, SETUP))
    assert isinstance(advert, Control)
    others = [_signed(SecAggClient(name, AGG, 3)) for name in ("b", "c", "d")]
    ads = sorted([unpack(advert, Advertisement), *others], key=lambda ad: ad.sender)

    reply = _ask(site, pack(1, Roster(AGG, 2, tuple(ads), FED.revocation_list)))

    assert isinstance(reply, Failure) and "not above half" in reply.reason


def test_a_sparse_update_is_refused_and_nothing_leaves() -> None:
    sparse = SparseArrays.from_dense(MODEL, {"w": np.array([0])})
    at = _at_train_step(lambda ins, _k=None: TrainRes(ins.round, sparse, num_examples=4))

    reply = _ask(at.site, _train_message(at))

    assert isinstance(reply, Failure) and reply.kind == "refused" and "sparse" in reply.reason


def test_the_masked_update_carries_no_meta_about_the_update_itself() -> None:
    meta = {"filters": "gaussian", "epsilon": 1.5, "dp_norm_before_clip": 3.25}
    update = arrays(w=[0.1, -0.2, 0.3])
    at = _at_train_step(
        lambda ins, _k=None: TrainRes(ins.round, update, num_examples=4, metrics={"loss": 2.0}, meta=meta)
    )

    reply = _ask(at.site, _train_message(at))

    assert isinstance(reply, Control)
    res = unpack(reply, MaskedTrainRes)
    assert dict(res.meta) == {"filters": "gaussian", "epsilon": 1.5}
    assert res.num_examples == 4 and res.metrics == {"loss": 2.0}
    assert res.masked.masked.dtype == np.uint32 and res.masked.masked.shape == (3,)


def test_a_train_step_for_another_round_is_refused() -> None:
    at = _at_train_step(lambda ins, _k=None: TrainRes(ins.round, arrays(w=[0.0, 0.0, 0.0]), num_examples=1))

    reply = _ask(at.site, _train_message(at, round=2))
    retry = _ask(at.site, _train_message(at))  # the aggregation ended with the refusal

    assert isinstance(reply, Failure) and "out of order" in reply.reason
    assert isinstance(retry, Failure) and "none under way" in retry.reason


def test_an_update_that_does_not_fit_the_model_is_refused() -> None:
    at = _at_train_step(lambda ins, _k=None: TrainRes(ins.round, Arrays.from_dict({"v": np.zeros(3, np.float32)}), 1))

    reply = _ask(at.site, _train_message(at))

    assert isinstance(reply, Failure) and "does not fit the model" in reply.reason
