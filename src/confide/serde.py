"""Records <-> bytes: with :mod:`confide.serde_container`, the only code that knows Confide's wire format.

A message is one safetensors buffer (:mod:`confide.serde_container`). Its tensors are the record's arrays; its
``__metadata__`` holds one entry, ``confide``, a JSON document checked against a pydantic schema (the record's
kind, round, scalars and the order of the arrays). Nothing is ever unpickled: safetensors holds raw numbers only,
and the JSON can name no class.

A :class:`~confide.records.Control` (one step of a protocol such as secure aggregation) carries its fields in four
typed maps of the header, so that decoding gives back the very types encoding was given: ``values`` (bool, int,
float, str), ``blobs`` (bytes, as lowercase hex), ``texts`` (tuples of str) and ``blob_lists`` (tuples of bytes, as
hex); its arrays are tensors like any record's. A field name appears in one map only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from confide.errors import PayloadError, PayloadTooLarge
from confide.records import (
    Arrays,
    Control,
    ControlValue,
    EvalIns,
    EvalRes,
    Failure,
    Record,
    SparseArrays,
    TrainIns,
    TrainRes,
)
from confide.sanitize import one_line
from confide.serde_container import (
    DEFAULT_MAX_BYTES,
    MAX_HEADER_BYTES,
    Encoded,
    decode_arrays,
    encode_arrays,
    encode_arrays_parts,
    flat_span,
    header_bytes,
    label,
    new_digest,
    reshaped,
    safetensors_parts,
    save_arrays,
    split_header,
    views,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_HEADER_BYTES",
    "WIRE_VERSION",
    "Encoded",
    "decode",
    "decode_arrays",
    "decode_as",
    "encode",
    "encode_arrays",
    "encode_arrays_parts",
    "encode_parts",
    "new_digest",
    "save_arrays",
]

WIRE_VERSION = 1
MASK_SUFFIX = "@mask"

Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
Count = Annotated[int, Field(ge=0, le=2**63 - 1)]
Dim = Annotated[int, Field(ge=0, le=2**48)]
ScalarValue = bool | Int64 | float | Annotated[str, Field(max_length=65_536)]
Name = Annotated[str, Field(min_length=1, max_length=512)]
Hex = Annotated[str, Field(pattern=r"^(?:[0-9a-f]{2})*$")]
Text = Annotated[str, Field(max_length=4096)]
Topic = Annotated[str, Field(max_length=64, pattern=r"^[a-z0-9_./-]*$")]


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    v: Literal[1]
    kind: Literal["train_ins", "train_res", "eval_ins", "eval_res", "failure", "control"]
    round: Count
    names: list[Name] = Field(default_factory=list, max_length=1_000_000)
    shapes: list[Annotated[list[Dim], Field(max_length=32)]] = Field(default_factory=list, max_length=1_000_000)
    config: dict[Name, ScalarValue] = Field(default_factory=dict)
    num_examples: Count = 0
    metrics: dict[Name, float] = Field(default_factory=dict)
    meta: dict[Name, ScalarValue] = Field(default_factory=dict)
    loss: float = 0.0
    reason: str = ""
    failure_kind: Literal["error", "refused"] = "error"
    sparse: bool = False
    topic: Topic = ""
    values: dict[Name, ScalarValue] = Field(default_factory=dict)
    blobs: dict[Name, Hex] = Field(default_factory=dict)
    texts: dict[Name, list[Text]] = Field(default_factory=dict)
    blob_lists: dict[Name, list[Hex]] = Field(default_factory=dict)


_KIND = {
    TrainIns: "train_ins",
    TrainRes: "train_res",
    EvalIns: "eval_ins",
    EvalRes: "eval_res",
    Failure: "failure",
    Control: "control",
}
_CONTROL_MAPS = ("values", "blobs", "texts", "blob_lists")


def encode_parts(record: Record) -> Encoded:
    """Encode a record without copying its arrays."""
    arrays: Arrays | None = None
    fields: dict[str, Any] = {"v": WIRE_VERSION, "kind": _KIND[type(record)], "round": record.round}
    if isinstance(record, TrainIns | EvalIns):
        arrays = record.arrays
        fields["config"] = dict(record.config)
    elif isinstance(record, TrainRes):
        fields.update(num_examples=record.num_examples, metrics=dict(record.metrics), meta=dict(record.meta))
        if isinstance(record.update, SparseArrays):
            return _sparse_parts(record.update, fields)
        arrays = record.update
    elif isinstance(record, EvalRes):
        fields.update(num_examples=record.num_examples, loss=record.loss, metrics=dict(record.metrics))
    elif isinstance(record, Control):
        arrays = record.arrays
        fields.update(topic=record.topic, **_control_maps(record.fields))
    else:
        fields.update(reason=record.reason, failure_kind=record.kind)
    if arrays is not None:
        fields["names"] = list(arrays.names())
        fields["shapes"] = [list(value.shape) for value in arrays.values()]
    return safetensors_parts(arrays, {"confide": _header(fields).model_dump_json()})


def _header(fields: dict[str, Any]) -> _Header:
    try:
        return _Header(**fields)
    except ValidationError as exc:
        raise PayloadError(f"a {fields['kind']} record cannot be encoded: {_problems(exc)}") from exc


def _control_maps(values: Mapping[str, ControlValue]) -> dict[str, dict[str, Any]]:
    """A control record's fields sorted into the header's typed maps (bytes as hex)."""
    maps: dict[str, dict[str, Any]] = {key: {} for key in _CONTROL_MAPS}
    for name, value in values.items():
        if isinstance(value, bytes):
            maps["blobs"][name] = value.hex()
        elif isinstance(value, tuple) and value and isinstance(value[0], bytes):
            maps["blob_lists"][name] = [item.hex() for item in value if isinstance(item, bytes)]
        elif isinstance(value, tuple):
            maps["texts"][name] = list(value)
        else:
            maps["values"][name] = value
    return maps


def _sparse_parts(update: SparseArrays, fields: dict[str, Any]) -> Encoded:
    """A sparse update: for each array the values sent under its name and, under ``name@mask``, a bit per entry
    of the dense array saying which were sent (n/8 bytes: less than any index list once over 1/32 is sent).
    The header lists the dense names and shapes."""
    fields.update(sparse=True, names=list(update.names()), shapes=[list(shape) for _, shape in update.shapes])
    tensors: dict[str, np.ndarray] = {}
    for name, idx, val in update.items():
        if MASK_SUFFIX in name:
            raise PayloadError(f"array name {name!r} contains {MASK_SUFFIX!r}, which sparse updates reserve")
        bits = np.zeros(math.prod(update.shape(name)), dtype=bool)
        bits[idx] = True
        tensors[name] = val
        tensors[name + MASK_SUFFIX] = np.packbits(bits)
    return safetensors_parts(Arrays.from_dict(tensors), {"confide": _header(fields).model_dump_json()})


def encode(record: Record) -> bytes:
    """Encode a record into one buffer."""
    return encode_parts(record).tobytes()


R = TypeVar("R", TrainIns, TrainRes, EvalIns, EvalRes, Failure, Control)


def decode(data: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Record:
    """Decode bytes into a record, refusing anything malformed, oversized or inconsistent."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PayloadError(f"payload must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"payload of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    header, document, length = _read_header(header_bytes(data))
    loaded = views(data, document, 8 + length)
    if not header.sparse and (set(loaded) != set(header.names) or len(loaded) != len(header.names)):
        raise PayloadError("payload arrays do not match the names its header lists")
    if len(header.shapes) != len(header.names):
        raise PayloadError("payload header lists a different number of shapes and names")
    if header.sparse:
        return _build_sparse(header, loaded)
    arrays = Arrays.from_dict(reshaped(loaded, header.names, header.shapes))
    flat = flat_span(data, document, 8 + length, header.names)
    if flat is not None:
        arrays = replace(arrays, flat=flat)
    return _build(header, arrays)


def _build_sparse(header: _Header, loaded: dict[str, np.ndarray]) -> TrainRes:
    if header.kind != "train_res":
        raise PayloadError(f"only a training result can carry a sparse update, not a {header.kind}")
    expected = {*header.names, *(name + MASK_SUFFIX for name in header.names)}
    if set(loaded) != expected or len(loaded) != len(expected):
        raise PayloadError("sparse payload arrays do not match the names its header lists")
    shapes = tuple((name, tuple(shape)) for name, shape in zip(header.names, header.shapes, strict=True))
    indices: dict[str, np.ndarray] = {}
    for name, shape in shapes:
        size, mask = math.prod(shape), loaded[name + MASK_SUFFIX]
        if mask.dtype != np.uint8 or mask.ndim != 1 or mask.size != (size + 7) // 8:
            raise PayloadError(f"sparse array {label(name)}: its mask does not cover its {size} entries")
        bits = np.unpackbits(mask)
        if bits[size:].any():
            raise PayloadError(f"sparse array {label(name)}: its mask marks entries past its {size} entries")
        indices[name] = np.flatnonzero(bits[:size]).astype(np.int64)
    try:
        update = SparseArrays(
            shapes, Arrays.from_dict(indices), Arrays.from_dict({name: loaded[name] for name in header.names})
        )
    except ValueError as exc:
        raise PayloadError(f"sparse update is malformed: {one_line(exc, 200)}") from exc
    return TrainRes(
        round=header.round, update=update, num_examples=header.num_examples, metrics=header.metrics, meta=header.meta
    )


def decode_as(data: bytes | bytearray | memoryview, kind: type[R], *, max_bytes: int = DEFAULT_MAX_BYTES) -> R:
    """Decode bytes and check that they hold a record of the expected type."""
    record = decode(data, max_bytes=max_bytes)
    if not isinstance(record, kind):
        raise PayloadError(f"expected a {kind.__name__} message, got {type(record).__name__}")
    return record


def read_header(data: bytes | bytearray | memoryview) -> _Header:
    """A message's checked header alone (kind, round, scalars, meta), read from its length prefix and JSON header
    without touching its arrays: for an observer that only reads what an update says of itself."""
    return _read_header(header_bytes(data))[0]


def _read_header(data: bytes) -> tuple[_Header, dict[str, Any], int]:
    document, length = split_header(data)
    try:
        meta = document["__metadata__"]["confide"]
    except (KeyError, TypeError) as exc:
        raise PayloadError("payload header is not a Confide message (no confide metadata)") from exc
    if not isinstance(meta, str):
        raise PayloadError("payload header is not a Confide message (no confide metadata)")
    try:
        return _Header.model_validate_json(meta), document, length
    except ValidationError as exc:
        raise PayloadError(f"payload header is invalid: {_problems(exc)}") from exc
    except RecursionError:
        raise PayloadError("payload header nests too deeply") from None


def _problems(exc: ValidationError) -> str:
    """The first three problems, each on one short line: a location names the message's own keys, which may be
    megabytes long or hold newlines."""
    return "; ".join(
        f"{one_line('.'.join(map(str, e['loc'])) or 'header', 80)}: {one_line(e['msg'], 120)}" for e in exc.errors()[:3]
    )


def _build(header: _Header, arrays: Arrays) -> Record:
    if header.kind == "control":
        return _build_control(header, arrays)
    if header.topic or any(getattr(header, key) for key in _CONTROL_MAPS):
        raise PayloadError(f"a {header.kind} message carries no topic or control fields")
    if header.kind == "train_ins":
        return TrainIns(round=header.round, arrays=arrays, config=header.config)
    if header.kind == "eval_ins":
        return EvalIns(round=header.round, arrays=arrays, config=header.config)
    if header.kind == "train_res":
        return TrainRes(
            round=header.round,
            update=arrays,
            num_examples=header.num_examples,
            metrics=header.metrics,
            meta=header.meta,
        )
    if len(arrays):
        raise PayloadError(f"a {header.kind} message carries no arrays, this one has {len(arrays)}")
    if header.kind == "eval_res":
        return EvalRes(round=header.round, num_examples=header.num_examples, loss=header.loss, metrics=header.metrics)
    return Failure(round=header.round, reason=header.reason, kind=header.failure_kind)


def _build_control(header: _Header, arrays: Arrays) -> Control:
    if not header.topic:
        raise PayloadError("a control message must name its topic")
    fields: dict[str, ControlValue] = {}
    for key in _CONTROL_MAPS:
        for name, value in getattr(header, key).items():
            if name in fields:
                raise PayloadError(f"control field {label(name)} appears in more than one of the header's maps")
            if key == "blobs":
                fields[name] = bytes.fromhex(value)
            elif key == "blob_lists":
                fields[name] = tuple(bytes.fromhex(item) for item in value)
            elif key == "texts":
                fields[name] = tuple(value)
            else:
                fields[name] = value
    return Control(round=header.round, topic=header.topic, fields=fields, arrays=arrays)
