"""Framing: a payload of many small arrays travels in few messages, and every byte arrives checked."""

from __future__ import annotations

import numpy as np
import pytest

from confide import serde
from confide.errors import PayloadError
from confide.records import Arrays, TrainRes
from confide.transport import framing


def _model(sizes: list[int]) -> Arrays:
    rng = np.random.default_rng(len(sizes))
    return Arrays.from_dict({f"layer{i}": rng.normal(size=n).astype(np.float32) for i, n in enumerate(sizes)})


def _data_frames(frames: list[bytes]) -> list[bytes]:
    return [f for f in frames if f[:1] == framing.DATA]


@pytest.mark.parametrize(
    "sizes",
    [
        [10] * 50,  # a small model of many arrays: one message, not fifty
        [framing.CHUNK_BYTES // 4 + 3, 7, framing.CHUNK_BYTES // 2, 1],  # parts straddling chunk boundaries
        [framing.CHUNK_BYTES // 4] * 3,  # parts that fill chunks exactly
        [1],
    ],
)
def test_an_encoded_model_is_packed_into_full_chunks_and_arrives_whole(sizes: list[int]) -> None:
    encoded = serde.encode_parts(TrainRes(round=1, update=_model(sizes), num_examples=3))

    frames = list(framing.frames(encoded, task="t1"))
    received = framing.receive(iter(frames), max_bytes=encoded.size)

    data = _data_frames(frames)
    assert len(data) == -(-encoded.size // framing.CHUNK_BYTES)  # as few messages as the chunk size allows
    assert all(len(f) - 1 == framing.CHUNK_BYTES for f in data[:-1])
    assert bytes(received.payload) == encoded.tobytes() and received.header["task"] == "t1"


def test_a_packed_chunk_altered_on_the_way_is_refused_by_its_digest() -> None:
    frames = list(framing.frames(serde.encode_parts(TrainRes(round=1, update=_model([10] * 50), num_examples=3))))
    data = next(i for i, f in enumerate(frames) if f[:1] == framing.DATA)
    frames[data] = frames[data][:-1] + bytes([frames[data][-1] ^ 1])

    with pytest.raises(PayloadError, match="digest does not match"):
        framing.receive(iter(frames), max_bytes=1 << 20)


def test_a_payload_that_fits_a_chunk_travels_as_one_frame_and_a_larger_one_in_chunks() -> None:
    small = serde.encode_parts(TrainRes(round=1, update=_model([100] * 20), num_examples=3))
    large = serde.encode_parts(TrainRes(round=1, update=_model([framing.CHUNK_BYTES // 3] * 2), num_examples=3))

    one = list(framing.message(small, task="t1"))
    many = list(framing.message(large, task="t2"))

    assert len(one) == 1 and one[0][:1] == framing.SINGLE
    assert many[0][:1] == framing.HEADER and len(many) == 2 + -(-large.size // framing.CHUNK_BYTES)
    for frames, encoded, task in ((one, small, "t1"), (many, large, "t2")):
        received = framing.receive(iter(frames), max_bytes=4 * framing.CHUNK_BYTES)
        assert bytes(received.payload) == encoded.tobytes() and received.header == {"task": task, "size": encoded.size}


def test_a_single_frame_altered_extended_or_misannounced_is_refused() -> None:
    (frame,) = framing.message(b"x" * 1000, task="t1")

    with pytest.raises(PayloadError, match="digest does not match"):
        framing.receive(iter([frame[:-1] + b"y"]), max_bytes=1 << 20)
    with pytest.raises(PayloadError, match="follow"):
        framing.receive(iter([frame, framing.DATA + b"more"]), max_bytes=1 << 20)
    with pytest.raises(PayloadError, match="more than the 999 bytes"):
        framing.receive(iter([frame.replace(b'"size": 1000', b'"size": 999', 1)]), max_bytes=1 << 20)
    with pytest.raises(PayloadError, match="without its digest"):
        framing.receive(iter([framing.SINGLE + b'{"size": 3}\nabc']), max_bytes=1 << 20)
    with pytest.raises(PayloadError, match="end of its header"):
        framing.receive(iter([framing.SINGLE + b'{"size": 3}']), max_bytes=1 << 20)
