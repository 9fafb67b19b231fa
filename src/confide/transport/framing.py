"""Framing of large payloads into chunks for streaming transports, each transfer checked by a digest.

A transfer is a header frame (``H`` + JSON: transfer id, size, sha256) followed by data frames
(``D`` + bytes), each at most :data:`CHUNK_BYTES`. Reassembly refuses a transfer whose size or digest does not
match its header, or that exceeds the receiver's limit, before anything decodes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from confide.errors import PayloadError, PayloadTooLarge

CHUNK_BYTES = 1 << 20
HEADER = b"H"
DATA = b"D"


@dataclass(frozen=True)
class Transfer:
    header: dict[str, Any]
    payload: bytes


def frames(payload: bytes, **header: Any) -> Iterator[bytes]:
    """Header frame, then data frames of at most CHUNK_BYTES."""
    meta = {**header, "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    yield HEADER + json.dumps(meta).encode()
    view = memoryview(payload)
    for start in range(0, len(payload), CHUNK_BYTES):
        yield DATA + bytes(view[start : start + CHUNK_BYTES])


def control(**fields: Any) -> bytes:
    """A header frame alone, for messages that carry no payload (waits, acknowledgements)."""
    return HEADER + json.dumps(fields).encode()


def parse_header(frame: bytes) -> dict[str, Any]:
    if not frame.startswith(HEADER):
        raise PayloadError("stream does not start with a header frame")
    try:
        header = json.loads(frame[1:])
    except ValueError as exc:
        raise PayloadError(f"header frame is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise PayloadError("header frame is not a JSON object")
    return header


def reassemble(stream: Iterable[bytes], *, max_bytes: int) -> Transfer:
    """Collect a header and its data frames; check size limit, size and digest."""
    iterator = iter(stream)
    try:
        first = next(iterator)
    except StopIteration:
        raise PayloadError("empty stream: no header frame") from None
    header = parse_header(first)
    size = header.get("size")
    digest = header.get("sha256")
    if not isinstance(size, int) or size < 0 or not isinstance(digest, str):
        raise PayloadError("header frame lacks a valid size and sha256")
    if size > max_bytes:
        raise PayloadTooLarge(f"transfer of {size} bytes exceeds the limit of {max_bytes} bytes")
    buffer = bytearray()
    for frame in iterator:
        if not frame.startswith(DATA):
            raise PayloadError("unexpected frame inside a transfer")
        buffer += memoryview(frame)[1:]
        if len(buffer) > size:
            raise PayloadError(f"transfer carries more than the {size} bytes its header announced")
    if len(buffer) != size:
        raise PayloadError(f"transfer is incomplete: {len(buffer)} of {size} bytes arrived")
    if hashlib.sha256(buffer).hexdigest() != digest:
        raise PayloadError("transfer digest does not match: the payload was corrupted on the way")
    return Transfer(header=header, payload=bytes(buffer))
