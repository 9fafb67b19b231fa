"""Malformed bytes never crash a decoder: every failure is a PayloadError, never another exception."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confide import serde
from confide.errors import PayloadError
from confide.privacy.secagg_messages import MaskedInput
from confide.privacy.secagg_wire import TOPICS, MaskedTrainRes, pack_masked, unpack
from confide.records import Arrays, Control, TrainRes
from confide.transport import framing

VALID = serde.encode(
    TrainRes(
        round=2,
        update=Arrays.from_dict({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.int64)}),
        num_examples=5,
        metrics={"loss": 0.5},
    )
)
CONTROL = serde.encode(
    pack_masked(
        3,
        MaskedTrainRes(
            MaskedInput("round-3", "site-a", ("site-a", "site-b"), bytes(range(32)), np.arange(8, dtype=np.uint32)),
            num_examples=5,
            metrics={"loss": 0.5},
            meta={"filters": "gaussian"},
        ),
    )
)
KINDS = {topic: kind for kind, topic in TOPICS.items()}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decodes_or_refuses(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        serde.decode(data, max_bytes=1 << 20)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_are_refused_cleanly(data: bytes) -> None:
    _decodes_or_refuses(data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_messages_are_refused_or_decode(mutations: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for index, value in mutations:
        data[index] = value

    _decodes_or_refuses(bytes(data))


@FUZZ
@given(st.integers(0, len(VALID)), st.binary(max_size=64))
def test_truncated_or_padded_messages_are_refused_or_decode(cut: int, tail: bytes) -> None:
    _decodes_or_refuses(VALID[:cut] + tail)


def _control_decodes_or_refuses(data: bytes) -> None:
    """Down to the secure-aggregation message: serde, then the wire's unpacking, refuse with PayloadError only."""
    with contextlib.suppress(PayloadError):
        record = serde.decode(data, max_bytes=1 << 20)
        if isinstance(record, Control) and record.topic in KINDS:
            unpack(record, KINDS[record.topic])


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(CONTROL) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_control_messages_are_refused_or_decode(mutations: list[tuple[int, int]]) -> None:
    data = bytearray(CONTROL)
    for index, value in mutations:
        data[index] = value

    _control_decodes_or_refuses(bytes(data))


@FUZZ
@given(st.integers(0, len(CONTROL)), st.binary(max_size=64))
def test_truncated_or_padded_control_messages_are_refused_or_decode(cut: int, tail: bytes) -> None:
    _control_decodes_or_refuses(CONTROL[:cut] + tail)


_NAMES = st.text(min_size=1, max_size=12)
_VALUES = st.one_of(
    st.booleans(),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=40),
    st.lists(st.text(max_size=8), max_size=4).map(tuple),
    st.lists(st.binary(max_size=8), min_size=1, max_size=4).map(tuple),
)


@FUZZ
@given(st.dictionaries(_NAMES, _VALUES, max_size=8), st.integers(0, 2**31))
def test_any_control_record_survives_the_wire(fields: dict[str, object], round: int) -> None:
    control = Control(round=round, topic="secagg/any", fields=fields)

    back = serde.decode_as(serde.encode(control), Control)

    assert dict(back.fields) == fields and back.round == round


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_frame_streams_are_refused_cleanly(frames: list[bytes]) -> None:
    with contextlib.suppress(PayloadError):
        framing.receive(frames, max_bytes=1 << 16)


def test_a_corrupted_chunk_fails_the_digest() -> None:
    frames = list(framing.frames(VALID, task="t1"))
    frames[1] = frames[1][:-1] + bytes([frames[1][-1] ^ 1])

    with pytest.raises(PayloadError, match="digest"):
        framing.receive(frames, max_bytes=1 << 20)


def test_a_transfer_without_its_trailer_or_with_extra_frames_is_refused() -> None:
    frames = list(framing.frames(VALID, task="t1"))

    with pytest.raises(PayloadError, match="without its digest"):
        framing.receive(frames[:-1], max_bytes=1 << 20)
    with pytest.raises(PayloadError, match="follow"):
        framing.receive([*frames, frames[1]], max_bytes=1 << 20)
    with pytest.raises(PayloadError, match="incomplete"):
        framing.receive([frames[0], frames[-1]], max_bytes=1 << 20)


def test_a_transfer_fills_the_buffer_it_is_given() -> None:
    frames = framing.frames(serde.encode_parts(serde.decode(VALID)), task="t1")
    target = bytearray(len(VALID) + 10)

    transfer = framing.receive(frames, max_bytes=1 << 20, allocate=lambda n: memoryview(target)[:n])

    assert bytes(transfer.payload) == VALID and bytes(target[: len(VALID)]) == VALID
