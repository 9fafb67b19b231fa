"""Secure-aggregation messages through Control records and serde: every field comes back, every flaw is named."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from confide import serde
from confide.errors import PayloadError
from confide.privacy.secagg import (
    Advertisement,
    Roster,
    SecAggClient,
    SecAggServer,
    SurvivorCheck,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from confide.privacy.secagg_identity import check_signature, sign_advertisement
from confide.privacy.secagg_wire import (
    MaskedTrainRes,
    SecAggSetup,
    SecureTrainIns,
    pack,
    pack_masked,
    pack_shares,
    pack_train,
    unpack,
    unpack_shares,
)
from confide.records import Arrays, Control, TrainIns
from confide.sim_identities import SimFederation

AGG = "round-1-test"
NAMES = ("a", "b", "c")
SCALE = 2.0**16


def _wire(control: Control) -> Control:
    return serde.decode_as(serde.encode(control), Control)


def test_every_step_survives_the_wire_and_the_sum_is_still_exact() -> None:
    server = SecAggServer(AGG, 4, 2, scale=SCALE, clip_range=4.0)
    clients = {name: SecAggClient(name, AGG, 4, scale=SCALE, clip_range=4.0) for name in NAMES}
    vectors = {name: np.array([i, -i, 0.5, 1.25]) for i, name in enumerate(NAMES)}
    model = Arrays.from_dict({"w": np.zeros(4, np.float32)})

    ads = [unpack(_wire(pack(1, client.advertise())), Advertisement) for client in clients.values()]
    roster = unpack(_wire(pack(1, server.roster(ads))), Roster)
    bundles = [unpack_shares(_wire(pack_shares(1, AGG, client.share(roster)))) for client in clients.values()]
    routed = server.route([share for _, bundle in bundles for share in bundle])
    masked = []
    for name, client in clients.items():
        sent = SecureTrainIns(TrainIns(1, model, {"lr": 0.5, "local_steps": 2}), AGG, tuple(routed[name]))
        ins = unpack(_wire(pack_train(sent)), SecureTrainIns)
        res = MaskedTrainRes(client.mask(vectors[name], ins.shares), 7, {"loss": 0.25}, {"filters": "gaussian"})
        masked.append(unpack(_wire(pack_masked(1, res)), MaskedTrainRes))
    server.collect([m.masked for m in masked])
    request = unpack(_wire(pack(1, server.unmask_request())), UnmaskRequest)
    responses = [unpack(_wire(pack(1, client.unmask(request))), UnmaskResponse) for client in clients.values()]
    result = server.finish(responses)

    np.testing.assert_allclose(result.sum, sum(vectors.values()), atol=3 / SCALE)
    assert [b[0] for b in bundles] == [AGG] * 3 and roster.names == NAMES
    assert ins.train.config == {"lr": 0.5, "local_steps": 2} and ins.train.arrays.names() == ("w",)
    assert masked[0].num_examples == 7 and masked[0].metrics == {"loss": 0.25}
    assert masked[0].meta == {"filters": "gaussian"} and masked[0].masked.masked.dtype == np.uint32


def test_setup_round_trips() -> None:
    setup = SecAggSetup(AGG, 10, 2.0**20, 4.0)

    assert unpack(_wire(pack(2, setup)), SecAggSetup) == setup


def _advert(**fields: object) -> Control:
    base: dict[str, object] = {
        "aggregation_id": AGG,
        "sender": "a",
        "c_public": bytes(32),
        "s_public": bytes(32),
        "certificate": b"certificate",
        "signature": b"signature",
    }
    base.update(fields)
    return Control(round=1, topic="secagg/advertisement", fields={k: v for k, v in base.items() if v is not None})


@pytest.mark.parametrize(
    ("control", "reason"),
    [
        (_advert(sender=None), "lacks the field 'sender'"),
        (_advert(c_public=bytes(31)), "'c_public' must be 32 bytes"),
        (_advert(s_public="00" * 32), "'s_public' must be 32 bytes, got str"),
        (_advert(aggregation_id=7), "'aggregation_id' must be a non-empty string"),
        (_advert(extra=1), "unexpected fields \\['extra'\\]"),
        (_advert(certificate=None), "lacks the field 'certificate'"),
        (_advert(signature=bytes(513)), "'signature' must be at most 512 bytes"),
        (Control(round=1, topic="secagg/roster", fields={"aggregation_id": AGG}), "expected a secagg/advertisement"),
    ],
)
def test_malformed_messages_are_payload_errors_naming_the_field(control: Control, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        unpack(_wire(control), Advertisement)


def test_lists_that_do_not_line_up_are_refused() -> None:
    roster = Control(
        round=1,
        topic="secagg/roster",
        fields={
            "aggregation_id": AGG,
            "threshold": 2,
            "senders": ("a", "b"),
            "c_publics": (bytes(32), bytes(32)),
            "s_publics": (bytes(32),),
            "certificates": (b"x", b"y"),
            "signatures": (b"x", b"y"),
            "revocation_list": b"",
        },
    )

    with pytest.raises(PayloadError, match="'s_publics' must list 2 items"):
        unpack(_wire(roster), Roster)


def test_a_masked_update_must_be_one_flat_uint32_vector() -> None:
    fields = {
        "aggregation_id": AGG,
        "sender": "a",
        "peers": ("a", "b"),
        "seed_commitment": bytes(32),
        "num_examples": 3,
    }
    as_floats = Control(1, "secagg/masked", fields, Arrays.from_dict({"masked": np.zeros(4, np.float32)}))
    with_extra = Control(
        1, "secagg/masked", fields, Arrays.from_dict({"masked": np.zeros(4, np.uint32), "x": np.zeros(1, np.uint32)})
    )

    with pytest.raises(PayloadError, match="flat uint32"):
        unpack(_wire(as_floats), MaskedTrainRes)
    with pytest.raises(PayloadError, match="exactly one array"):
        unpack(_wire(with_extra), MaskedTrainRes)


def test_a_share_value_outside_the_field_is_refused() -> None:
    response = Control(
        round=1,
        topic="secagg/unmasked",
        fields={
            "aggregation_id": AGG,
            "sender": "a",
            "self_mask_names": ("a",),
            "self_mask_values": (b"\xff" * 66,),
            "mask_key_names": (),
            "mask_key_values": (),
        },
    )

    with pytest.raises(PayloadError, match="outside the field"):
        unpack(_wire(response), UnmaskResponse)


def test_a_signed_roster_survives_the_wire_with_its_revocation_list() -> None:
    federation = SimFederation.create(["a", "b"])
    ads = [sign_advertisement(federation.identities[name], SecAggClient(name, AGG, 4).advertise(), 3) for name in "ab"]
    roster = replace(SecAggServer(AGG, 4, 2).roster(ads), revocation_list=federation.revocation_list)

    advertised = unpack(_wire(pack(3, ads[0])), Advertisement)
    received = unpack(_wire(pack(3, roster)), Roster)

    assert advertised == ads[0] and received == roster
    assert (
        check_signature(received.advertisements[1], 3).serial_number
        == federation.identities["b"].certificate.serial_number
    )


def test_the_consistency_check_survives_the_wire() -> None:
    check = SurvivorCheck(AGG, ("a", "b"), ("c",))
    signed = SurvivorSignature(AGG, "a", b"signature")
    request = UnmaskRequest(AGG, ("a", "b"), ("c",), (("a", b"one"), ("b", b"two")))
    unsigned = UnmaskRequest(AGG, ("a", "b"), ())

    assert unpack(_wire(pack(4, check)), SurvivorCheck) == check
    assert unpack(_wire(pack(4, signed)), SurvivorSignature) == signed
    assert unpack(_wire(pack(4, request)), UnmaskRequest) == request
    assert unpack(_wire(pack(4, unsigned)), UnmaskRequest) == unsigned
