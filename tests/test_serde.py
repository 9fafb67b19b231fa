from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

from confide import serde
from confide.errors import PayloadError, PayloadTooLarge
from confide.records import Arrays, Control, EvalIns, EvalRes, Failure, TrainIns, TrainRes


def _arrays() -> Arrays:
    rng = np.random.default_rng(0)
    return Arrays.from_dict(
        {
            "z.weight": rng.normal(size=(3, 4)).astype(np.float32),
            "a.bias": rng.normal(size=4).astype(np.float64),
            "count": np.array(7, dtype=np.int64),
            "mask": np.array([True, False]),
        }
    )


@pytest.mark.parametrize(
    "record",
    [
        TrainIns(round=3, arrays=_arrays(), config={"lr": 0.01, "local_steps": 5, "name": "x", "flag": True}),
        TrainRes(round=3, update=_arrays(), num_examples=12, metrics={"loss": 0.5}, meta={"filters": "a,b"}),
        EvalIns(round=2, arrays=_arrays()),
        EvalRes(round=2, num_examples=4, loss=0.25, metrics={"dice_wt": 0.9}),
        Failure(round=5, reason="budget spent", kind="refused"),
    ],
)
def test_round_trip_preserves_every_field(record: object) -> None:
    decoded = serde.decode(serde.encode(record))  # type: ignore[arg-type]

    assert type(decoded) is type(record)
    for field in ("round", "config", "num_examples", "metrics", "meta", "loss", "reason", "kind"):
        if hasattr(record, field):
            assert getattr(decoded, field) == getattr(record, field)
    for attr in ("arrays", "update"):
        if hasattr(record, attr):
            original, back = getattr(record, attr), getattr(decoded, attr)
            assert back.names() == original.names()  # order survives although safetensors sorts
            assert back.allclose(original)
            assert all(a.dtype == b.dtype for a, b in zip(back.values(), original.values(), strict=True))


def test_nan_metric_survives_the_wire() -> None:
    res = TrainRes(round=1, update=Arrays.from_dict({}), num_examples=1, metrics={"loss": float("nan")})

    back = serde.decode_as(serde.encode(res), TrainRes)

    assert math.isnan(back.metrics["loss"])


def test_truncated_payload_is_a_payload_error() -> None:
    data = serde.encode(TrainIns(round=1, arrays=_arrays()))

    for cut in (0, 4, 9, len(data) // 2, len(data) - 1):
        with pytest.raises(PayloadError):
            serde.decode(data[:cut])


def test_corrupt_header_is_a_payload_error() -> None:
    data = bytearray(serde.encode(TrainIns(round=1, arrays=_arrays())))
    data[10:20] = b"\xff" * 10

    with pytest.raises(PayloadError):
        serde.decode(bytes(data))


def test_oversized_payload_is_refused_before_parsing() -> None:
    data = serde.encode(TrainIns(round=1, arrays=_arrays()))

    with pytest.raises(PayloadTooLarge, match="exceeds the limit"):
        serde.decode(data, max_bytes=len(data) - 1)


def test_huge_claimed_header_is_refused() -> None:
    with pytest.raises(PayloadError, match="header claims"):
        serde.decode(struct.pack("<Q", 2**40) + b"{}")


def _forge(header: dict[str, object], tensors: dict[str, np.ndarray] | None = None) -> bytes:
    import safetensors.numpy

    return bytes(safetensors.numpy.save(tensors or {}, metadata={"confide": json.dumps(header)}))


def test_unknown_kind_or_field_is_refused() -> None:
    with pytest.raises(PayloadError, match="kind"):
        serde.decode(_forge({"v": 1, "kind": "os.system", "round": 1}))
    with pytest.raises(PayloadError, match="not permitted"):
        serde.decode(_forge({"v": 1, "kind": "failure", "round": 1, "__class__": "x"}))


def test_names_must_match_the_arrays() -> None:
    header = {"v": 1, "kind": "train_ins", "round": 1, "names": ["a", "b"]}

    with pytest.raises(PayloadError, match="do not match"):
        serde.decode(_forge(header, {"a": np.ones(1, np.float32)}))


def test_safetensors_without_confide_metadata_is_refused() -> None:
    import safetensors.numpy

    with pytest.raises(PayloadError, match="not a Confide message"):
        serde.decode(bytes(safetensors.numpy.save({"a": np.ones(1)})))


def test_decode_as_checks_the_kind() -> None:
    data = serde.encode(Failure(round=1, reason="x"))

    with pytest.raises(PayloadError, match="expected a TrainRes"):
        serde.decode_as(data, TrainRes)


def test_arrays_file_round_trip_and_corruption() -> None:
    data = serde.encode_arrays(_arrays())

    assert serde.decode_arrays(data).allclose(_arrays())
    with pytest.raises(PayloadError):
        serde.decode_arrays(data[: len(data) // 3])


def test_decoded_arrays_are_read_only_views_and_bounds_are_checked() -> None:
    data = serde.encode(TrainIns(round=1, arrays=_arrays()))
    decoded = serde.decode_as(data, TrainIns)

    with pytest.raises(ValueError):
        decoded.arrays["z.weight"][0, 0] = 1.0
    header = {"v": 1, "kind": "train_ins", "round": 1, "names": ["a"], "shapes": [[4]]}
    forged = json.dumps(
        {"__metadata__": {"confide": json.dumps(header)}, "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}}
    ).encode()
    with pytest.raises(PayloadError, match="outside the payload"):
        serde.decode(struct.pack("<Q", len(forged)) + forged + b"\x00" * 16)


def test_messages_are_standard_safetensors_and_encoding_copies_no_array() -> None:
    import safetensors.numpy

    source = _arrays()
    encoded = serde.encode_parts(TrainRes(round=1, update=source, num_examples=3))

    loaded = safetensors.numpy.load(encoded.tobytes())  # any safetensors reader can open a message
    for name, value in source.items():
        np.testing.assert_array_equal(loaded[name].reshape(value.shape), value)
    assert encoded.size == len(encoded.tobytes())
    weight = np.frombuffer(encoded.parts[1], dtype=np.float32)
    assert np.shares_memory(weight, source["z.weight"])  # the part is the array's own memory
    assert encoded.digest() == encoded.digest() == encoded.known_digest


def test_control_round_trip_gives_back_every_field_with_its_type() -> None:
    fields = {
        "flag": True,
        "count": 3,
        "scale": 0.5,
        "name": "site-a",
        "key": bytes(range(32)),
        "names": ("a", "b"),
        "keys": (b"\x00\xff", b""),
        "nobody": (),
    }
    control = Control(
        round=4, topic="secagg/test", fields=fields, arrays=Arrays.from_dict({"v": np.arange(3, dtype=np.uint32)})
    )

    back = serde.decode_as(serde.encode(control), Control)

    assert back.round == 4 and back.topic == "secagg/test"
    assert dict(back.fields) == fields
    assert {name: type(value) for name, value in back.fields.items()} == {name: type(v) for name, v in fields.items()}
    assert back.arrays["v"].dtype == np.uint32 and back.arrays["v"].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"blobs": {"key": "zz"}}, "blobs.key"),
        ({"blobs": {"key": "abc"}}, "blobs.key"),
        ({"texts": {"names": ["a", 3]}}, "texts.names"),
        ({"values": {"x": 1}, "blobs": {"x": "00"}}, "more than one"),
        ({"topic": ""}, "topic"),
        ({"topic": "Secagg/Upper"}, "topic"),
        ({"values": {"x": [1]}}, "values.x"),
    ],
)
def test_malformed_control_fields_are_payload_errors_naming_the_field(header: dict[str, object], reason: str) -> None:
    forged = _forge({"v": 1, "kind": "control", "round": 1, "topic": "secagg/test", **header})

    with pytest.raises(PayloadError, match=reason):
        serde.decode(forged)


def test_control_fields_on_another_kind_are_refused() -> None:
    forged = _forge({"v": 1, "kind": "failure", "round": 1, "reason": "x", "values": {"sneaky": 1}})

    with pytest.raises(PayloadError, match="no topic or control fields"):
        serde.decode(forged)


WRAPPING_SHAPE = [6, 2**21 + 1, 2**42 - 2**21 + 1]
"""6 * (2**63 + 1): numpy's int64 product of these dimensions wraps around to 6."""


def test_a_shape_whose_int64_product_wraps_to_the_arrays_size_is_refused() -> None:
    """Found by tests/server/test_fuzz_site_answers.py: a header shape whose numpy product wrapped around to the
    array's size passed the count check, and numpy's reshape then raised ValueError out of decode."""
    assert int(np.prod(WRAPPING_SHAPE)) == 6  # the premise: numpy's product wraps
    header = {"v": 1, "kind": "eval_res", "round": 1, "names": ["w"], "shapes": [WRAPPING_SHAPE]}
    forged = _forge(header, {"w": np.zeros(6, np.float32)})

    with pytest.raises(PayloadError, match=r"'w' holds 6 values, its header says shape \[6, 2097153, "):
        serde.decode(forged)


@pytest.mark.parametrize("shape", ["[1e999]", "[-1, -6]", "[6.0]", '["6"]'])
def test_an_array_file_whose_recorded_shape_is_not_a_whole_number_is_refused(shape: str) -> None:
    """Before: a recorded dimension of 1e999 raised OverflowError out of decode_arrays (a final model from a
    hostile server), and dimensions of -1 and -6 numpy's ValueError from reshape."""
    import safetensors.numpy

    order = f'[["w", {shape}]]'
    data = bytes(safetensors.numpy.save({"w": np.zeros(6, np.float32)}, metadata={"confide_order": order}))

    with pytest.raises(PayloadError, match="recorded order is malformed"):
        serde.decode_arrays(data)


def test_an_error_quotes_a_hostile_name_on_one_short_line() -> None:
    """Before: a tensor named with 100 000 characters made a rejection reason of 100 kB, and a header key holding
    a newline made one of two lines (the server stores and logs the reason)."""
    long_name = "\n" + "a" * 100_000
    forged = _forge({"v": 1, "kind": "train_res", "round": 1}, {long_name: np.zeros(2, np.float32)})
    forged_key = _forge({"v": 1, "kind": "train_res", "round": 1, "meta": {"x\ny" * 1000: [1]}})

    for data in (forged, forged_key):
        with pytest.raises(PayloadError) as caught:
            serde.decode(data)

        message = str(caught.value)
        assert "\n" not in message and len(message) < 400, message[:400]
