"""Framing of large payloads into chunks for streaming transports, each transfer checked by a digest.

A transfer is a header frame (``H`` + JSON: transfer id, size), data frames (``D`` + bytes, each at most
:data:`CHUNK_BYTES`), then a trailer frame (``T`` + the payload's digest in hex, see
:func:`confide.serde.new_digest`). A payload that fits in one chunk may instead travel as one frame (``S`` + the
header's JSON, a newline, the digest, a newline, the bytes): every gRPC message costs the server the same whatever
its size, so a small model's exchange takes two messages instead of six. The sender hashes each chunk as it sends
it and the receiver as it arrives, so neither reads the payload an extra time. Reception writes the chunks straight
into one buffer of the announced size and refuses a transfer that exceeds the receiver's limit, carries more or
fewer bytes than announced, or whose digest does not match, before anything decodes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from confide.errors import PayloadError, PayloadTooLarge
from confide.serde import Encoded, new_digest

CHUNK_BYTES = 1 << 20
HEADER = b"H"
DATA = b"D"
TRAILER = b"T"
SINGLE = b"S"
_SINGLE_HEADER_BYTES = 2048  # a header longer than this (it never is) sends the transfer in frames

Allocate = Callable[[int], memoryview]


@dataclass(frozen=True)
class Transfer:
    header: dict[str, Any]
    payload: memoryview


def _chunks(payload: bytes | Encoded) -> Iterator[memoryview | bytes]:
    """The payload in chunks of CHUNK_BYTES (the last one shorter). An encoded payload comes in parts, one per
    array; small ones are packed together, for each gRPC message costs the same whatever its size (a model of
    many small arrays sent part by part took a message per array)."""
    parts = payload.parts if isinstance(payload, Encoded) else (memoryview(payload),)
    pending = bytearray()
    for whole in parts:
        part = memoryview(whole).cast("B") if not isinstance(whole, memoryview) or whole.format != "B" else whole
        start = 0
        if pending:
            start = min(part.nbytes, CHUNK_BYTES - len(pending))
            pending += part[:start]
            if len(pending) < CHUNK_BYTES:
                continue
            yield bytes(pending)
            pending = bytearray()
        while part.nbytes - start >= CHUNK_BYTES:
            yield part[start : start + CHUNK_BYTES]
            start += CHUNK_BYTES
        if start < part.nbytes:
            pending += part[start:]
    if pending:
        yield bytes(pending)


def frames(payload: bytes | Encoded, **header: Any) -> Iterator[bytes]:
    """Header frame, data frames of at most CHUNK_BYTES, trailer frame with the digest."""
    size = payload.size if isinstance(payload, Encoded) else len(payload)
    yield HEADER + json.dumps({**header, "size": size}).encode()
    known = payload.known_digest if isinstance(payload, Encoded) else None
    hasher = new_digest()
    for chunk in _chunks(payload):
        if known is None:
            hasher.update(chunk)
        yield DATA + chunk
    yield TRAILER + (known or hasher.hexdigest()).encode()


def message(payload: bytes | Encoded, **header: Any) -> Iterator[bytes]:
    """The transfer in as few frames as it fits: one ``S`` frame when the payload fits in a chunk, else
    :func:`frames`."""
    size = payload.size if isinstance(payload, Encoded) else len(payload)
    head = json.dumps({**header, "size": size}).encode()
    if size > CHUNK_BYTES or len(head) > _SINGLE_HEADER_BYTES:
        yield from frames(payload, **header)
        return
    body = payload.tobytes() if isinstance(payload, Encoded) else bytes(payload)
    known = payload.known_digest if isinstance(payload, Encoded) else None
    if known is None:
        hasher = new_digest()
        hasher.update(body)
        known = hasher.hexdigest()
    yield b"".join((SINGLE, head, b"\n", known.encode(), b"\n", body))


def control(**fields: Any) -> bytes:
    """A header frame alone, for messages that carry no payload (waits, acknowledgements)."""
    return HEADER + json.dumps(fields).encode()


def parse_header(frame: bytes) -> dict[str, Any]:
    """A transfer's header, from its header frame or its single frame."""
    if frame.startswith(SINGLE):
        end = frame.find(b"\n", 1, 2 + _SINGLE_HEADER_BYTES)
        if end < 0:
            raise PayloadError("single frame without the end of its header")
        text = frame[1:end]
    elif frame.startswith(HEADER):
        text = frame[1:]
    else:
        raise PayloadError("stream does not start with a header frame")
    try:
        header = json.loads(text)
    except ValueError as exc:
        raise PayloadError(f"header frame is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise PayloadError("header frame is not a JSON object")
    return header


def new_buffer(size: int) -> memoryview:
    """A writable buffer for a transfer. Numpy asks the kernel for huge pages on large buffers, which makes
    filling 100 MB about five times faster than a ``bytearray`` (far fewer page faults)."""
    return np.empty(size, dtype=np.uint8).data


def announced_size(header: dict[str, Any], max_bytes: int) -> int:
    """The size a header frame announces, refused when it is not a whole number of bytes or exceeds
    ``max_bytes``: checked before anything is allocated for the transfer."""
    size = header.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise PayloadError("header frame lacks a valid size")
    if size > max_bytes:
        raise PayloadTooLarge(f"transfer of {size} bytes exceeds the limit of {max_bytes} bytes")
    return size


class Receiver:
    """The data and trailer frames of one transfer, fed one at a time (by a blocking or an asynchronous reader),
    written straight into one buffer of the announced size."""

    def __init__(self, header: dict[str, Any], *, max_bytes: int, allocate: Allocate) -> None:
        self.header = header
        self.size = announced_size(header, max_bytes)
        self.buffer = allocate(self.size)
        self._hasher = new_digest()
        self.filled = 0
        self._digest: bytes | None = None

    def first(self, frame: bytes) -> None:
        """The transfer's first frame: nothing more for a header frame; the whole transfer for a single frame."""
        if not frame.startswith(SINGLE):
            return
        start = frame.find(b"\n", 1, 2 + _SINGLE_HEADER_BYTES) + 1
        end = frame.find(b"\n", start, start + 256)
        if start <= 0 or end < 0:
            raise PayloadError("single frame without its digest")
        self._data(memoryview(frame)[end + 1 :])
        self._digest = bytes(frame[start:end])

    def feed(self, frame: bytes) -> None:
        if self._digest is not None:
            raise PayloadError("frames follow the transfer's trailer")
        kind, body = frame[:1], memoryview(frame)[1:]
        if kind == TRAILER:
            self._digest = bytes(body)
            return
        if kind != DATA:
            raise PayloadError("unexpected frame inside a transfer")
        self._data(body)

    def _data(self, body: memoryview) -> None:
        end = self.filled + body.nbytes
        if end > self.size:
            raise PayloadError(f"transfer carries more than the {self.size} bytes its header announced")
        self.buffer[self.filled : end] = body
        self._hasher.update(body)
        self.filled = end

    def finish(self) -> Transfer:
        """The whole transfer, once the stream has ended: every byte and a matching digest, or PayloadError."""
        if self.filled != self.size:
            raise PayloadError(f"transfer is incomplete: {self.filled} of {self.size} bytes arrived")
        if self._digest is None:
            raise PayloadError("transfer ended without its digest")
        if self._hasher.hexdigest().encode() != self._digest:
            raise PayloadError("transfer digest does not match: the payload was corrupted on the way")
        return Transfer(header=self.header, payload=self.buffer[: self.size])


def receive_after(
    header: dict[str, Any], rest: Iterator[bytes], *, max_bytes: int, allocate: Allocate, first: bytes | None = None
) -> Transfer:
    """Receive the data and trailer frames of a transfer whose header frame (``first``, when it may be a single
    frame holding the whole transfer) has been read."""
    receiver = Receiver(header, max_bytes=max_bytes, allocate=allocate)
    if first is not None:
        receiver.first(first)
    for frame in rest:
        receiver.feed(frame)
    return receiver.finish()


def receive(stream: Iterable[bytes], *, max_bytes: int, allocate: Allocate = new_buffer) -> Transfer:
    """Read a header frame, then its data into a buffer from ``allocate``; check size, limit and digest."""
    iterator = iter(stream)
    try:
        first = next(iterator)
    except StopIteration:
        raise PayloadError("empty stream: no header frame") from None
    return receive_after(parse_header(first), iterator, max_bytes=max_bytes, allocate=allocate, first=first)
