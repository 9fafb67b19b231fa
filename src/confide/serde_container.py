"""The safetensors container under every Confide message and model file, with every bound checked.

A buffer is an 8-byte little-endian header length, a JSON header (padded to 8 bytes) naming each tensor's dtype,
shape and byte range, then the tensors' bytes. Encoding returns the buffer as parts that reference the arrays'
memory (nothing is copied); decoding checks the size, the header and every tensor's bounds before it returns
read-only views into the received bytes. What the header's metadata means is :mod:`confide.serde`'s business.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from confide.errors import PayloadError, PayloadTooLarge
from confide.records import Arrays

DEFAULT_MAX_BYTES = 4 * 1024**3
MAX_HEADER_BYTES = 16 * 1024**2


def new_digest() -> xxhash.xxh3_128:
    """The hash that checks a transfer arrived whole: XXH3-128 (about 30 GB/s; SHA-256 manages 2 GB/s here).

    It guards against chunks lost, repeated or reordered on the way. Tampering is TLS's to stop: every record
    of the connection is authenticated (AES-GCM) and both ends are verified against the federation's CA.
    """
    return xxhash.xxh3_128()


class Encoded:
    """An encoded message as a list of buffers (header, then each array's memory), never concatenated.

    Transports stream the parts as they are; :meth:`tobytes` joins them when one buffer is needed. The
    arrays are referenced, not copied, so an ``Encoded`` must not outlive a change to them (Confide's
    arrays are read-only).
    """

    def __init__(self, parts: list[memoryview]) -> None:
        self.parts = tuple(parts)
        self.size = sum(part.nbytes for part in self.parts)
        self._digest: str | None = None
        self._lock = threading.Lock()

    def digest(self) -> str:
        """The message's transfer digest (:func:`new_digest`), computed once."""
        with self._lock:
            if self._digest is None:
                hasher = new_digest()
                for part in self.parts:
                    hasher.update(part)
                self._digest = hasher.hexdigest()
            return self._digest

    @property
    def known_digest(self) -> str | None:
        """The digest if :meth:`digest` has computed it already (a stream then need not hash the parts)."""
        return self._digest

    def tobytes(self) -> bytes:
        return b"".join(self.parts)


_WIRE_DTYPES = {
    np.dtype("float16"): "F16",
    np.dtype("float32"): "F32",
    np.dtype("float64"): "F64",
    np.dtype("int8"): "I8",
    np.dtype("int16"): "I16",
    np.dtype("int32"): "I32",
    np.dtype("int64"): "I64",
    np.dtype("uint8"): "U8",
    np.dtype("uint32"): "U32",
    np.dtype("bool"): "BOOL",
}


def safetensors_parts(arrays: Arrays | None, metadata: dict[str, str]) -> Encoded:
    """A safetensors buffer as parts: 8-byte length, JSON header padded to 8 bytes, then each array's bytes."""
    document: dict[str, Any] = {"__metadata__": metadata}
    buffers: list[memoryview] = []
    offset = 0
    for name, value in arrays.items() if arrays is not None else ():
        if value.dtype not in _WIRE_DTYPES:
            raise PayloadError(f"array {name!r} has dtype {value.dtype}, which the wire format does not carry")
        native = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        document[name] = {
            "dtype": _WIRE_DTYPES[value.dtype],
            "shape": list(native.shape),
            "data_offsets": [offset, offset + native.nbytes],
        }
        offset += native.nbytes
        buffers.append(native.reshape(-1).data.cast("B"))
    text = json.dumps(document, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return Encoded([memoryview(struct.pack("<Q", len(text)) + text), *buffers])


NAME_SHOWN = 60
"""Most characters of a name from a message that an error message quotes (a name may be megabytes long)."""


def label(name: object, limit: int = NAME_SHOWN) -> str:
    """``name`` quoted for an error message: its ``repr`` (one printable line), cut to ``limit`` characters."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shape_label(shape: object) -> str:
    """A shape from a message for an error message: at most its first 8 dimensions, each at most 20 digits."""
    if not isinstance(shape, list | tuple):
        return label(shape)
    dims = [label(n, 20) for n in shape[:8]]
    return "[" + ", ".join(dims) + (", …]" if len(shape) > 8 else "]")


def flat_span(
    data: bytes | bytearray | memoryview, document: dict[str, Any], start: int, names: list[str]
) -> np.ndarray | None:
    """The arrays ``names`` as one read-only vector, when they share one floating dtype and lie back to back in
    that order (as the encoder writes them); else None. Call after :func:`views` has checked every entry."""
    if not names:
        return None
    specs = [document[name] for name in names]
    dtype = _DTYPES[specs[0]["dtype"]]
    if not np.issubdtype(dtype, np.floating) or any(spec["dtype"] != specs[0]["dtype"] for spec in specs):
        return None
    begin = end = specs[0]["data_offsets"][0]
    for spec in specs:
        if spec["data_offsets"][0] != end:
            return None
        end = spec["data_offsets"][1]
    flat = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=start + begin)
    flat.flags.writeable = False
    return flat


def reshaped(loaded: dict[str, np.ndarray], names: list[str], shapes: list[list[int]]) -> dict[str, np.ndarray]:
    """Arrays in the recorded order and shapes (safetensors stores a 0-d array as shape (1,)). The entries are
    counted in Python's integers: numpy's product wraps around in int64, so a shape of huge dimensions could pass
    for a small one."""
    out: dict[str, np.ndarray] = {}
    for name, shape in zip(names, shapes, strict=True):
        value = loaded[name]
        if tuple(shape) != value.shape:
            if math.prod(shape) != value.size:
                raise PayloadError(
                    f"array {label(name)} holds {value.size} values, its header says shape {shape_label(shape)}"
                )
            try:
                value = value.reshape(shape)
            except ValueError as exc:
                raise PayloadError(f"array {label(name)} cannot take shape {shape_label(shape)}") from exc
        out[name] = value
    return out


def header_bytes(data: bytes | bytearray | memoryview) -> bytes:
    """The length prefix and the JSON header only (copying no array data)."""
    if len(data) < 8:
        return bytes(data)
    (length,) = struct.unpack("<Q", bytes(data[:8]))
    return bytes(data[: 8 + min(length, MAX_HEADER_BYTES)])


def split_header(data: bytes) -> tuple[dict[str, Any], int]:
    """The safetensors JSON header and its length, with every bound checked."""
    if len(data) < 8:
        raise PayloadError(f"payload of {len(data)} bytes is too short to hold a header")
    (length,) = struct.unpack("<Q", data[:8])
    if length > MAX_HEADER_BYTES:
        raise PayloadError(f"payload header claims {length} bytes, more than the limit of {MAX_HEADER_BYTES}")
    if 8 + length > len(data):
        raise PayloadError(f"payload is truncated: header claims {length} bytes, {len(data) - 8} present")
    try:
        document = json.loads(data[8 : 8 + length])
    except ValueError as exc:
        raise PayloadError(f"payload header is not JSON: {exc}") from exc
    except RecursionError:
        raise PayloadError("payload header nests too deeply") from None
    if not isinstance(document, dict):
        raise PayloadError("payload header is not a JSON object")
    return document, length


_DTYPES: dict[str, np.dtype[Any]] = {
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "U8": np.dtype("u1"),
    "U32": np.dtype("<u4"),
    "BOOL": np.dtype("?"),
}


MAX_DIMS = 32
"""The most dimensions a tensor on the wire may have (numpy's own limit is 64)."""


def _whole(value: object) -> int:
    """A JSON number that must be a whole number of int64's range (not a bool, a float or a string)."""
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
        raise ValueError(f"{value!r} is not a whole number in range")
    return value


def views(data: bytes | bytearray | memoryview, document: dict[str, Any], start: int) -> dict[str, np.ndarray]:
    """Arrays as read-only views into ``data`` (no copy), after checking every tensor entry's bounds."""
    available = len(data) - start
    out: dict[str, np.ndarray] = {}
    for name, spec in document.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[spec["dtype"]]
            shape = [_whole(n) for n in spec["shape"]]
            begin, end = (_whole(n) for n in spec["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PayloadError(
                f"tensor entry {label(name)} is malformed or has a dtype the wire does not carry"
            ) from exc
        if len(shape) > MAX_DIMS or any(n < 0 for n in shape) or not 0 <= begin <= end <= available:
            raise PayloadError(f"tensor {label(name)} lies outside the payload")
        count = math.prod(shape)
        if count * dtype.itemsize != end - begin:
            size = end - begin
            raise PayloadError(f"tensor {label(name)}: shape {shape_label(shape)} does not fill its {size} bytes")
        view = np.frombuffer(data, dtype=dtype, count=count, offset=start + begin).reshape(shape)
        view.flags.writeable = False
        out[name] = view
    return out


def encode_arrays_parts(arrays: Arrays) -> Encoded:
    """Arrays alone (for checkpoints and model files): safetensors with the array order recorded."""
    order = json.dumps([[name, list(value.shape)] for name, value in arrays.items()])
    return safetensors_parts(arrays, {"confide_order": order})


def encode_arrays(arrays: Arrays) -> bytes:
    return encode_arrays_parts(arrays).tobytes()


def save_arrays(path: Path, arrays: Arrays) -> Path:
    """Write arrays as a safetensors file atomically (a temporary file, synced, then renamed), copying nothing."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        for part in encode_arrays_parts(arrays).parts:
            handle.write(part)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def decode_arrays(data: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Arrays:
    """Inverse of :func:`encode_arrays`."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"array file of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    document, length = split_header(header_bytes(data))
    try:
        order = json.loads(document["__metadata__"]["confide_order"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PayloadError("array file is not a Confide safetensors file (no recorded order)") from exc
    loaded = views(data, document, 8 + length)
    try:
        names = [str(name) for name, _ in order]
        shapes = [[_whole(n) for n in shape] for _, shape in order]
    except (TypeError, ValueError) as exc:
        raise PayloadError("array file's recorded order is malformed") from exc
    if any(n < 0 for shape in shapes for n in shape):
        raise PayloadError("array file's recorded order is malformed (a negative dimension)")
    if sorted(names) != sorted(loaded):
        raise PayloadError("array file's recorded order does not match its arrays")
    return Arrays.from_dict(reshaped(loaded, names, shapes))
