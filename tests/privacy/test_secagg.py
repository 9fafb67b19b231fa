"""Secure aggregation: Shamir, fixed point, masking, dropouts and the checks on every message."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pytest
from scipy import stats

from confide.errors import PrivacyError
from confide.privacy.secagg import (
    FIELD_PRIME,
    Advertisement,
    EncryptedShare,
    MaskedInput,
    SecAggClient,
    SecAggError,
    SecAggServer,
    UnmaskRequest,
    UnmaskResponse,
    check_no_wrap,
    default_threshold,
    fixed_point_decode,
    fixed_point_encode,
    prg_uint32,
    run_secure_sum,
    shamir_combine,
    shamir_split,
)

SCALE = 2.0**16
CLIP = 8.0
AGG = "round-7"


def det_rng(seed: int) -> Callable[[int], bytes]:
    """Reproducible random bytes for tests only (the protocol uses os.urandom by default)."""
    return np.random.default_rng(seed).bytes


@dataclass
class Session:
    server: SecAggServer
    clients: dict[str, SecAggClient]
    routed: dict[str, list[EncryptedShare]]


def start(names: list[str], length: int, threshold: int, *, seed: int = 0) -> Session:
    """Run advertise, roster, share and route."""
    server = SecAggServer(AGG, length, threshold, scale=SCALE, clip_range=CLIP)
    clients = {
        name: SecAggClient(name, AGG, length, scale=SCALE, clip_range=CLIP, rng=det_rng(seed + i))
        for i, name in enumerate(names)
    }
    roster = server.roster([c.advertise() for c in clients.values()])
    routed = server.route([s for c in clients.values() for s in c.share(roster)])
    return Session(server, clients, routed)


# ------------------------------------------------------------------------------------------------ Shamir


def test_any_t_shares_reconstruct_and_t_minus_1_do_not() -> None:
    secret = int.from_bytes(bytes(range(32)), "big")
    n, t = 6, 4
    shares = shamir_split(secret, n, t, rng=det_rng(1))
    assert [x for x, _ in shares] == list(range(1, n + 1))
    assert all(0 <= y < FIELD_PRIME for _, y in shares)
    for subset in itertools.combinations(shares, t):
        assert shamir_combine(list(subset)) == secret
    assert shamir_combine(shares) == secret
    for subset in itertools.combinations(shares, t - 1):
        assert shamir_combine(list(subset)) != secret


def test_shamir_refuses_bad_arguments() -> None:
    with pytest.raises(SecAggError, match="2 <= t <= n"):
        shamir_split(5, 3, 4)
    with pytest.raises(SecAggError, match="secret"):
        shamir_split(FIELD_PRIME, 3, 2)
    with pytest.raises(SecAggError, match="same abscissa"):
        shamir_combine([(1, 5), (1, 6)])


def test_shares_of_one_secret_differ_between_splits() -> None:
    first = shamir_split(42, 3, 2)
    second = shamir_split(42, 3, 2)
    assert first != second
    assert shamir_combine(first[:2]) == shamir_combine(second[1:]) == 42


# ------------------------------------------------------------------------------------------- fixed point


def test_fixed_point_round_trip_within_one_over_scale() -> None:
    x = np.random.default_rng(2).normal(0, 3, size=10_000)
    decoded = fixed_point_decode(fixed_point_encode(x, scale=SCALE, clip_range=CLIP), scale=SCALE)
    assert decoded.dtype == np.float64
    np.testing.assert_array_less(np.abs(decoded - np.clip(x, -CLIP, CLIP)), 1 / SCALE)
    assert decoded.max() <= CLIP and decoded.min() >= -CLIP
    assert fixed_point_encode(np.array([-1 / SCALE]), scale=SCALE, clip_range=CLIP)[0] == 2**32 - 1


def test_no_wrap_check_refuses_sums_that_could_wrap() -> None:
    check_no_wrap(127, scale=2.0**16, clip_range=256.0)  # 127 * 2**24 < 2**31
    with pytest.raises(SecAggError, match="wrap"):
        check_no_wrap(128, scale=2.0**16, clip_range=256.0)  # == 2**31
    with pytest.raises(SecAggError, match="wrap"):
        run_secure_sum({f"s{i}": np.zeros(3) for i in range(4)}, scale=2.0**20, clip_range=1024.0)
    with pytest.raises(SecAggError, match="NaN"):
        fixed_point_encode(np.array([np.nan]), scale=SCALE, clip_range=CLIP)


def test_sum_of_max_values_does_not_wrap() -> None:
    n, scale, clip = 5, 2.0**16, (2**31 - 1) / (5 * 2.0**16)
    check_no_wrap(n, scale=scale, clip_range=clip)
    encoded = [fixed_point_encode(np.array([1e9, -1e9]), scale=scale, clip_range=clip) for _ in range(n)]
    total = np.sum(encoded, axis=0, dtype=np.uint32)
    np.testing.assert_allclose(fixed_point_decode(total, scale=scale), [n * clip, -n * clip], atol=n / scale)


def test_prg_is_aes_ctr_and_deterministic() -> None:
    # AES-256 of the zero block under the zero key (a published test value), read as little-endian words.
    expected = np.frombuffer(bytes.fromhex("dc95c078a2408989ad48a21492842087"), dtype="<u4")
    np.testing.assert_array_equal(prg_uint32(bytes(32), 4), expected)
    seed = bytes(range(32))
    np.testing.assert_array_equal(prg_uint32(seed, 1000), prg_uint32(seed, 1000))
    np.testing.assert_array_equal(prg_uint32(seed, 1000)[:10], prg_uint32(seed, 10))


# ------------------------------------------------------------------------------------------- the sum


def test_sum_is_exact_to_fixed_point_precision() -> None:
    rng = np.random.default_rng(3)
    vectors = {f"site-{i}": rng.normal(0, 4, size=2_000) for i in range(5)}
    vectors["site-4"] = vectors["site-4"].astype(np.float32)
    result = run_secure_sum(vectors, threshold=3, scale=SCALE, clip_range=CLIP)
    expected = np.sum([np.clip(v.astype(np.float64), -CLIP, CLIP) for v in vectors.values()], axis=0)
    assert result.count == 5 and result.dropped == ()
    assert result.contributors == tuple(sorted(vectors))
    assert result.sum.dtype == np.float64
    np.testing.assert_allclose(result.sum, expected, rtol=0, atol=5 / SCALE)
    assert np.abs(expected).max() > CLIP  # the clipping was exercised


def test_masked_input_looks_uniform_and_hides_the_input() -> None:
    length = 100_000
    session = start(["a", "b", "c"], length, 2, seed=10)
    zeros = np.zeros(length)
    signal = np.random.default_rng(4).normal(0, 1, size=length)
    masked_zero = session.clients["a"].mask(zeros, session.routed["a"]).masked
    masked_signal = session.clients["b"].mask(signal, session.routed["b"]).masked
    masked_other_zero = session.clients["c"].mask(zeros, session.routed["c"]).masked
    assert masked_zero.dtype == np.uint32 and masked_zero.shape == (length,)

    counts = np.bincount(masked_zero >> np.uint32(24), minlength=256)
    assert stats.chisquare(counts).pvalue > 0.001
    low_counts = np.bincount(masked_zero & np.uint32(0xFF), minlength=256)
    assert stats.chisquare(low_counts).pvalue > 0.001

    encoded = fixed_point_encode(signal, scale=SCALE, clip_range=CLIP).view(np.int32).astype(np.float64)
    assert np.corrcoef(signal, encoded)[0, 1] > 0.99  # without the mask the input shows plainly
    assert abs(np.corrcoef(signal, masked_signal.view(np.int32).astype(np.float64))[0, 1]) < 0.02
    assert abs(np.corrcoef(signal, masked_signal.astype(np.float64))[0, 1]) < 0.02

    assert not np.array_equal(masked_zero, masked_other_zero)
    assert np.mean(masked_zero == masked_other_zero) < 0.001


# ------------------------------------------------------------------------------------------- dropouts


def _vectors(n: int, seed: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"site-{i}": rng.uniform(-3, 3, size=500) for i in range(n)}


@pytest.mark.parametrize("dropped", [("site-2",), ("site-0", "site-4")])
def test_dropout_after_masking_keeps_their_inputs_and_unmasks_without_them(dropped: tuple[str, ...]) -> None:
    vectors = _vectors(5)
    result = run_secure_sum(vectors, threshold=3, drop_after_masking=dropped, scale=SCALE, clip_range=CLIP)
    # Their masked inputs arrived: they are in the sum although they never helped unmask it.
    assert result.count == 5 and result.dropped == ()
    np.testing.assert_allclose(result.sum, np.sum(list(vectors.values()), axis=0), rtol=0, atol=5 / SCALE)


@pytest.mark.parametrize("dropped", [("site-3",), ("site-1", "site-4")])
def test_dropout_before_masking_gives_the_sum_of_the_others(dropped: tuple[str, ...]) -> None:
    vectors = _vectors(5)
    result = run_secure_sum(vectors, threshold=3, drop_before_masking=dropped, scale=SCALE, clip_range=CLIP)
    survivors = [name for name in vectors if name not in dropped]
    assert result.count == len(survivors)
    assert result.dropped == tuple(sorted(dropped))
    assert result.contributors == tuple(survivors)
    expected = np.sum([vectors[name] for name in survivors], axis=0)
    np.testing.assert_allclose(result.sum, expected, rtol=0, atol=5 / SCALE)
    # Sanity: the dropped inputs would have changed the result.
    assert np.abs(result.sum - np.sum(list(vectors.values()), axis=0)).max() > 0.1


def test_mixed_dropouts_with_default_threshold() -> None:
    vectors = _vectors(7, seed=6)
    assert default_threshold(7) == 5
    result = run_secure_sum(
        vectors, drop_before_masking=["site-5"], drop_after_masking=["site-1"], scale=SCALE, clip_range=CLIP
    )
    expected = np.sum([v for name, v in vectors.items() if name != "site-5"], axis=0)
    assert result.count == 6 and result.dropped == ("site-5",)
    np.testing.assert_allclose(result.sum, expected, rtol=0, atol=7 / SCALE)


def test_too_many_dropouts_before_masking_name_the_shortfall() -> None:
    with pytest.raises(SecAggError, match=r"only 3 of 5 participants sent masked input, threshold is 4 \(short by 1\)"):
        run_secure_sum(_vectors(5), threshold=4, drop_before_masking=["site-0", "site-1"], scale=SCALE, clip_range=CLIP)


def test_too_many_dropouts_after_masking_name_the_shortfall() -> None:
    with pytest.raises(SecAggError, match=r"only 2 unmask responses, threshold is 4 \(short by 2\)"):
        run_secure_sum(
            _vectors(5), threshold=4, drop_after_masking=["site-0", "site-1", "site-2"], scale=SCALE, clip_range=CLIP
        )


def test_too_few_clients_share() -> None:
    session_server = SecAggServer(AGG, 4, 3, scale=SCALE, clip_range=CLIP)
    clients = [SecAggClient(f"c{i}", AGG, 4, scale=SCALE, clip_range=CLIP) for i in range(4)]
    roster = session_server.roster([c.advertise() for c in clients])
    with pytest.raises(SecAggError, match=r"only 2 clients sent shares, threshold is 3 \(short by 1\)"):
        session_server.route([s for c in clients[:2] for s in c.share(roster)])


# ------------------------------------------------------------------------------------------- refusals


def _to_unmask(names: list[str], length: int = 8, threshold: int = 2) -> Session:
    session = start(names, length, threshold, seed=20)
    session.server.collect([c.mask(np.ones(length), session.routed[name]) for name, c in session.clients.items()])
    return session


def test_client_refuses_request_for_both_shares_of_one_peer() -> None:
    session = _to_unmask(["a", "b", "c", "d"])
    greedy = UnmaskRequest(AGG, survivors=("a", "b", "c", "d"), dropped=("c",))
    with pytest.raises(SecAggError, match=r"client 'a'.*both.*\['c'\]"):
        session.clients["a"].unmask(greedy)
    # The refusal is not a dead end for an honest request, but a client answers one request only.
    honest = session.server.unmask_request()
    response = session.clients["a"].unmask(honest)
    assert [name for name, _ in response.self_mask_shares] == ["a", "b", "c", "d"]
    assert response.mask_key_shares == ()
    with pytest.raises(SecAggError, match="out of order"):
        session.clients["a"].unmask(UnmaskRequest(AGG, survivors=("a", "b", "c"), dropped=("d",)))


def test_client_refuses_requests_below_threshold_or_for_strangers() -> None:
    session = _to_unmask(["a", "b", "c", "d"], threshold=3)
    with pytest.raises(SecAggError, match="threshold"):
        session.clients["a"].unmask(UnmaskRequest(AGG, survivors=("a", "b"), dropped=("c", "d")))
    with pytest.raises(SecAggError, match=r"unknown: \['zed'\]"):
        session.clients["b"].unmask(UnmaskRequest(AGG, survivors=("a", "b", "c", "d", "zed"), dropped=()))
    with pytest.raises(SecAggError, match="aggregation 'other'"):
        session.clients["c"].unmask(UnmaskRequest("other", survivors=("a", "b", "c", "d"), dropped=()))


def test_tampered_share_is_refused() -> None:
    session = start(["a", "b", "c"], 8, 2, seed=30)
    shares = list(session.routed["b"])
    victim = next(i for i, s in enumerate(shares) if s.sender == "c")
    flipped = bytearray(shares[victim].ciphertext)
    flipped[3] ^= 0x01
    shares[victim] = replace(shares[victim], ciphertext=bytes(flipped))
    with pytest.raises(SecAggError, match=r"client 'b'.*share from 'c' failed authentication"):
        session.clients["b"].mask(np.zeros(8), shares)


def test_misrouted_share_is_refused() -> None:
    session = start(["a", "b", "c"], 8, 2, seed=31)
    meant_for_a = next(s for s in session.routed["a"] if s.sender == "c")
    shares = [s for s in session.routed["b"] if s.sender != "c"] + [replace(meant_for_a, recipient="b")]
    with pytest.raises(SecAggError, match="share from 'c' failed authentication"):
        session.clients["b"].mask(np.zeros(8), shares)


def test_wrong_aggregation_id_is_refused_everywhere() -> None:
    server = SecAggServer(AGG, 4, 2, scale=SCALE, clip_range=CLIP)
    stranger = SecAggClient("x", "another-round", 4, scale=SCALE, clip_range=CLIP)
    local = [SecAggClient(n, AGG, 4, scale=SCALE, clip_range=CLIP) for n in ("a", "b")]
    with pytest.raises(SecAggError, match=r"advertisement from 'x' is for aggregation 'another-round'"):
        server.roster([c.advertise() for c in local] + [stranger.advertise()])

    session = start(["a", "b", "c"], 4, 2, seed=32)
    wrong = replace(session.routed["a"][0], aggregation_id="another-round")
    with pytest.raises(SecAggError, match="aggregation 'another-round'"):
        session.clients["a"].mask(np.zeros(4), [wrong, *session.routed["a"][1:]])
    masked = session.clients["b"].mask(np.zeros(4), session.routed["b"])
    with pytest.raises(SecAggError, match=r"masked input from 'b' is for aggregation 'another-round'"):
        session.server.collect([replace(masked, aggregation_id="another-round")])


def test_server_validates_masked_inputs() -> None:
    session = start(["a", "b", "c"], 6, 2, seed=33)
    ma = session.clients["a"].mask(np.zeros(6), session.routed["a"])
    with pytest.raises(SecAggError, match=r"masked input from 'b' has shape \(5,\)"):
        session.server.collect([MaskedInput(AGG, "b", ma.peers, ma.seed_commitment, np.zeros(5, dtype=np.uint32))])
    with pytest.raises(SecAggError, match="dtype float64"):
        session.server.collect([MaskedInput(AGG, "b", ma.peers, ma.seed_commitment, np.zeros(6))])
    with pytest.raises(SecAggError, match="'mallory', which is not a participant"):
        session.server.collect([replace(ma, sender="mallory")])
    with pytest.raises(SecAggError, match="malformed seed commitment"):
        session.server.collect([replace(ma, seed_commitment=b"short")])
    with pytest.raises(SecAggError, match="masked with other participants"):
        session.server.collect([replace(ma, peers=("a", "b"))])
    with pytest.raises(SecAggError, match="duplicate masked input from 'a'"):
        session.server.collect([ma, ma])
    session.server.collect([ma])
    with pytest.raises(SecAggError, match="duplicate masked input from 'a'"):
        session.server.collect([ma])


def test_client_validates_its_vector() -> None:
    session = start(["a", "b"], 6, 2, seed=34)
    with pytest.raises(SecAggError, match=r"client 'a'.*shape \(7,\)"):
        session.clients["a"].mask(np.zeros(7), session.routed["a"])
    with pytest.raises(SecAggError, match="float32 or float64"):
        session.clients["a"].mask(np.zeros(6, dtype=np.int64), session.routed["a"])
    with pytest.raises(SecAggError, match="NaN"):
        session.clients["a"].mask(np.full(6, np.nan), session.routed["a"])


def test_server_validates_advertisements_and_shares() -> None:
    clients = [SecAggClient(n, AGG, 4, scale=SCALE, clip_range=CLIP) for n in ("a", "b", "c")]
    ads = [c.advertise() for c in clients]
    with pytest.raises(SecAggError, match="duplicate advertisement from 'a'"):
        SecAggServer(AGG, 4, 2, scale=SCALE, clip_range=CLIP).roster([*ads, ads[0]])
    with pytest.raises(SecAggError, match="reuses a public key"):
        SecAggServer(AGG, 4, 2, scale=SCALE, clip_range=CLIP).roster(
            [*ads, Advertisement(AGG, "d", ads[0].c_public, bytes(range(1, 33)))]
        )
    with pytest.raises(SecAggError, match=r"only 3 clients advertised, threshold is 4 \(short by 1\)"):
        SecAggServer(AGG, 4, 4, scale=SCALE, clip_range=CLIP).roster(ads)
    server = SecAggServer(AGG, 4, 2, scale=SCALE, clip_range=CLIP)
    roster = server.roster(ads)
    bundles = {c.name: c.share(roster) for c in clients}
    everything = [s for b in bundles.values() for s in b]
    with pytest.raises(SecAggError, match="unknown sender 'eve'"):
        server.route([*everything, replace(everything[0], sender="eve")])
    with pytest.raises(SecAggError, match="duplicate share from 'a' to 'a'"):
        server.route([*everything, everything[0]])
    with pytest.raises(SecAggError, match=r"client 'a' sent an incomplete bundle of shares \(missing: \['c'\]\)"):
        server.route([s for s in everything if not (s.sender == "a" and s.recipient == "c")])


def test_client_checks_the_roster() -> None:
    server = SecAggServer(AGG, 4, 2, scale=SCALE, clip_range=CLIP)
    a, b, c = (SecAggClient(n, AGG, 4, scale=SCALE, clip_range=CLIP) for n in ("a", "b", "c"))
    roster = server.roster([a.advertise(), b.advertise()])
    with pytest.raises(SecAggError, match=r"client 'c'.*not on the roster"):
        c.share(roster)
    forged = replace(
        roster,
        advertisements=(replace(roster.advertisements[0], s_public=bytes(range(32))), *roster.advertisements[1:]),
    )
    with pytest.raises(SecAggError, match=r"client 'a'.*other keys under its name"):
        a.share(forged)
    with pytest.raises(SecAggError, match="threshold 3 is invalid for 2 clients"):
        a.share(replace(roster, threshold=3))
    with pytest.raises(SecAggError, match="roster is for aggregation 'x'"):
        a.share(replace(roster, aggregation_id="x"))


def test_server_finish_validates_responses() -> None:
    session = _to_unmask(["a", "b", "c", "d"], threshold=3)
    session.server.collect([])  # collecting nothing more is allowed
    request = UnmaskRequest(AGG, ("a", "b", "c", "d"), ())
    assert session.server.unmask_request() == request
    responses = [session.clients[n].unmask(request) for n in ("a", "b", "c")]
    with pytest.raises(SecAggError, match="duplicate unmask response from 'a'"):
        session.server.finish([*responses, responses[0]])
    with pytest.raises(SecAggError, match=r"only 2 unmask responses, threshold is 3 \(short by 1\)"):
        session.server.finish(responses[:2])
    with pytest.raises(SecAggError, match="'zed', which is not a survivor"):
        session.server.finish([*responses, replace(responses[0], sender="zed")])
    with pytest.raises(SecAggError, match="self-mask shares are for"):
        session.server.finish(
            [*responses[:2], replace(responses[2], self_mask_shares=responses[2].self_mask_shares[:3])]
        )
    corrupt = replace(
        responses[1],
        self_mask_shares=(
            ("a", (responses[1].self_mask_shares[0][1] + 1) % FIELD_PRIME),
            *responses[1].self_mask_shares[1:],
        ),
    )
    with pytest.raises(SecAggError, match="rebuilt self mask of 'a' does not match its commitment"):
        session.server.finish([responses[0], corrupt, responses[2]])
    result = session.server.finish(responses)
    np.testing.assert_allclose(result.sum, np.full(8, 4.0), atol=4 / SCALE)


def test_corrupt_mask_key_share_is_detected() -> None:
    session = start(["a", "b", "c", "d"], 8, 3, seed=40)
    session.server.collect([session.clients[n].mask(np.ones(8), session.routed[n]) for n in ("a", "b", "c")])
    request = session.server.unmask_request()
    assert request.dropped == ("d",)
    responses = [session.clients[n].unmask(request) for n in ("a", "b", "c")]
    name, value = responses[0].mask_key_shares[0]
    bad = replace(responses[0], mask_key_shares=((name, (value + 1) % FIELD_PRIME),))
    with pytest.raises(SecAggError, match="'d'"):
        session.server.finish([bad, *responses[1:]])
    result = session.server.finish(responses)
    assert result.count == 3 and result.dropped == ("d",)
    np.testing.assert_allclose(result.sum, np.full(8, 3.0), atol=3 / SCALE)


def test_error_type_and_message_shapes() -> None:
    assert issubclass(SecAggError, ValueError) and issubclass(SecAggError, PrivacyError)
    with pytest.raises(SecAggError, match="at least 2 clients"):
        default_threshold(1)
    assert [default_threshold(n) for n in (2, 3, 5, 10)] == [2, 3, 4, 7]
    with pytest.raises(SecAggError, match="threshold must be an int >= 2"):
        SecAggServer(AGG, 4, 1)
    assert isinstance(UnmaskResponse(AGG, "a", (), ()), UnmaskResponse)
