"""Structure-aware mutations of an encoded site answer, for the fuzzing in ``test_fuzz_site_answers.py``.

An answer is parsed into its parts (the safetensors document of tensor entries, the Confide header inside its
metadata, the body of array bytes); a mutation changes one part the way a hostile site could (a field of the wrong
type, a number out of range, NaN, deep nesting, a long text with newlines, a key missing or added, a tensor entry's
dtype, shape or offsets, the body's bytes); the parts are then packed again as a safetensors buffer.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

HEADER_KEYS = (
    "v",
    "kind",
    "round",
    "names",
    "shapes",
    "config",
    "num_examples",
    "metrics",
    "meta",
    "loss",
    "reason",
    "failure_kind",
    "sparse",
    "topic",
    "values",
    "blobs",
    "texts",
    "blob_lists",
)
MAPS = ("meta", "metrics", "config", "values", "texts", "blobs")
KINDS = ("train_ins", "train_res", "eval_ins", "eval_res", "failure", "control", "", "TRAIN_RES")
WIRE_DTYPES = ("F16", "F32", "F64", "I8", "I16", "I32", "I64", "U8", "U32", "BOOL", "BF16", "F8_E4M3", "f32", "")
TENSOR_FIELDS = ("dtype", "shape", "data_offsets")


@dataclass(frozen=True)
class Deep:
    """JSON nested ``depth`` levels deep (``[[[...]]]`` or ``{"a":{"a":...}}``), written as raw text."""

    depth: int
    opener: str

    def text(self) -> str:
        if self.opener == "[":
            return "[" * self.depth + "]" * self.depth
        return '{"a":' * self.depth + "0" + "}" * self.depth


@dataclass
class Message:
    """An answer taken apart: ``header`` is the Confide header (any JSON value once mutated, or raw text)."""

    document: dict[str, Any]
    header: Any
    body: bytes
    raw_header: str | None = None


def parse(data: bytes) -> Message:
    (length,) = struct.unpack("<Q", data[:8])
    document = json.loads(data[8 : 8 + length])
    header = json.loads(document["__metadata__"]["confide"])
    return Message(document=document, header=header, body=data[8 + length :])


_counter = itertools.count()


def _dumps(value: Any) -> str:
    """JSON text of ``value`` with every :class:`Deep` written raw, and NaN and infinities as Python writes them."""
    raws: dict[str, str] = {}

    def placeholder(obj: object) -> str:
        if not isinstance(obj, Deep):
            raise TypeError(f"cannot write {obj!r} as JSON")
        token = f"@@deep-{next(_counter)}@@"
        raws[f'"{token}"'] = obj.text()
        return token

    text = json.dumps(value, default=placeholder)
    for token, raw in raws.items():
        text = text.replace(token, raw)
    return text


def render(message: Message) -> bytes:
    document = dict(message.document)
    metadata = document.get("__metadata__")
    if isinstance(metadata, dict) and "confide" in metadata:
        inner = message.raw_header if message.raw_header is not None else _dumps(message.header)
        document["__metadata__"] = {**metadata, "confide": inner}
    text = _dumps(document).encode("utf-8", "surrogatepass")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + message.body


class Mutation:
    def apply(self, message: Message) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class SetHeader(Mutation):
    key: str
    value: Any
    drop: bool = False

    def apply(self, message: Message) -> None:
        if not isinstance(message.header, dict):
            return
        if self.drop:
            message.header.pop(self.key, None)
        else:
            message.header[self.key] = self.value


@dataclass(frozen=True)
class SetEntry(Mutation):
    """One key of a header map (``meta``, ``metrics``...): an existing key (by index) or a new one."""

    section: str
    key: int | str
    value: Any
    drop: bool = False

    def apply(self, message: Message) -> None:
        if not isinstance(message.header, dict):
            return
        target = message.header.setdefault(self.section, {})
        if not isinstance(target, dict):
            return
        key = self.key
        if isinstance(key, int):
            if not target:
                return
            key = sorted(target)[key % len(target)]
        if self.drop:
            target.pop(key, None)
        else:
            target[key] = self.value


@dataclass(frozen=True)
class ReorderNames(Mutation):
    """The header's array names (and their shapes) in another order, one dropped, or one repeated."""

    how: str

    def apply(self, message: Message) -> None:
        if not isinstance(message.header, dict):
            return
        names, shapes = message.header.get("names"), message.header.get("shapes")
        if not isinstance(names, list) or not isinstance(shapes, list) or not names or not shapes:
            return
        if self.how == "reverse":
            names.reverse()
            shapes.reverse()
        elif self.how == "drop":
            names.pop()
            shapes.pop()
        else:
            names.append(names[0])
            shapes.append(shapes[0])


@dataclass(frozen=True)
class SetTensor(Mutation):
    """One field of one tensor entry (chosen by index), dropped or set to ``value``."""

    index: int
    field: str
    value: Any
    drop: bool = False

    def apply(self, message: Message) -> None:
        names = sorted(name for name in message.document if name != "__metadata__")
        if not names:
            return
        entry = message.document[names[self.index % len(names)]]
        if not isinstance(entry, dict):
            return
        if self.drop:
            entry.pop(self.field, None)
        else:
            entry[self.field] = self.value


@dataclass(frozen=True)
class RenameTensor(Mutation):
    index: int
    name: str

    def apply(self, message: Message) -> None:
        names = sorted(name for name in message.document if name != "__metadata__")
        if names:
            old = names[self.index % len(names)]
            message.document[self.name] = message.document.pop(old)


@dataclass(frozen=True)
class AddTensor(Mutation):
    name: str
    entry: Any

    def apply(self, message: Message) -> None:
        message.document[self.name] = self.entry


@dataclass(frozen=True)
class ReplaceHeader(Mutation):
    """The Confide metadata replaced: by another JSON value, or by raw text (cut JSON, not JSON at all)."""

    value: Any
    raw: str | None = None

    def apply(self, message: Message) -> None:
        message.header = self.value
        message.raw_header = self.raw


@dataclass(frozen=True)
class SetMetadata(Mutation):
    """The safetensors ``__metadata__`` entry itself set to ``value`` (a Confide header no longer a string)."""

    value: Any

    def apply(self, message: Message) -> None:
        message.document["__metadata__"] = self.value


@dataclass(frozen=True)
class Body(Mutation):
    """The array bytes cut at ``cut`` (from the end), extended, or one byte overwritten."""

    cut: int = 0
    extra: bytes = b""
    poke: tuple[int, int] | None = None

    def apply(self, message: Message) -> None:
        body = bytearray(message.body[: len(message.body) - self.cut] if self.cut else message.body)
        if self.poke is not None and body:
            body[self.poke[0] % len(body)] = self.poke[1]
        message.body = bytes(body) + self.extra


def mutate(data: bytes, mutations: list[Mutation]) -> bytes:
    message = parse(data)
    message.document = copy.deepcopy(message.document)
    for mutation in mutations:
        mutation.apply(message)
    return render(message)


# ------------------------------------------------------------------------------------------------- strategies

_INTS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from(
        [0, -1, 1, 2, 3, 6, 2**31, 2**32, 2**48, 2**48 + 1, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64]
    ),
    st.sampled_from([10**400, -(10**400)]),
)
_FLOATS = st.one_of(
    st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, 2.0, 6.0, 1e19, 86_400.5])
)
_LONG = st.builds(
    lambda piece, count: piece * count,
    st.sampled_from(["a", "\n", "x\r\n", "\x00", "\u2028", "é", "{", "\\", '"', "\x1b[31m"]),
    st.integers(1, 100_000),
)
_TEXT = st.one_of(st.text(max_size=30), _LONG)
_DEEP = st.builds(Deep, st.integers(1, 100_000), st.sampled_from("[{"))
_SCALARS = st.one_of(st.none(), st.booleans(), _INTS, _FLOATS, _TEXT)
HOSTILE = st.one_of(
    _SCALARS,
    _DEEP,
    st.recursive(
        _SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=8,
    ),
)
_SMALL = st.integers(-3, 40)
_SHAPES = st.one_of(
    st.lists(st.integers(0, 7), max_size=3),
    st.lists(st.one_of(_SMALL, _INTS, _FLOATS), max_size=40),
    HOSTILE,
)
_OFFSETS = st.one_of(
    st.lists(st.integers(-1, 64), min_size=2, max_size=2),
    st.lists(st.one_of(_SMALL, _INTS, _FLOATS), max_size=3),
    HOSTILE,
)
_NAMES = st.one_of(
    st.sampled_from(["w", "b", "w@mask", "b@mask", "__metadata__", "", "w\n", "loss"]), st.text(max_size=20), _LONG
)
_TENSOR_ENTRY = (
    st.fixed_dictionaries({"dtype": st.sampled_from(WIRE_DTYPES), "shape": _SHAPES, "data_offsets": _OFFSETS}) | HOSTILE
)
_SCALAR = st.one_of(st.booleans(), _INTS, _FLOATS, _TEXT)
_SECTION_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "meta": st.one_of(_SCALAR, HOSTILE),
    "metrics": st.one_of(_FLOATS, _INTS, HOSTILE),
    "config": st.one_of(_SCALAR, HOSTILE),
    "values": st.one_of(_SCALAR, HOSTILE),
    "texts": st.one_of(st.lists(_TEXT, max_size=3), HOSTILE),
    "blobs": st.one_of(st.sampled_from(["00ff", "0g", "abc", "", "AB"]), HOSTILE),
}
_DIMS = st.one_of(
    st.integers(0, 7), st.sampled_from([-1, 2**31, 2**48, 2**48 + 1, 2**63, 2**21 + 1, 2**42 - 2**21 + 1])
)
_HEADER_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "v": st.sampled_from([1, 0, 2, "1", 1.0, True, None]),
    "kind": st.sampled_from(KINDS),
    "round": st.one_of(st.integers(-2, 3), _INTS),
    "num_examples": st.one_of(st.integers(-2, 100), _INTS, _FLOATS),
    "loss": _FLOATS,
    "reason": _TEXT,
    "sparse": st.booleans(),
    "shapes": st.lists(st.lists(_DIMS, max_size=4), max_size=3),
    "names": st.lists(_NAMES, max_size=3),
    "failure_kind": st.sampled_from(["error", "refused", "fatal", ""]),
    "topic": st.sampled_from(["secagg/train", "x" * 65, "A", ""]),
}

set_header = st.one_of(
    *(st.builds(SetHeader, st.just(key), st.one_of(_HEADER_VALUES.get(key, HOSTILE), HOSTILE)) for key in HEADER_KEYS),
    *(st.builds(SetHeader, st.just(key), value) for key, value in _HEADER_VALUES.items()),
    st.builds(SetHeader, _NAMES, HOSTILE),
    st.builds(SetHeader, st.sampled_from(HEADER_KEYS), st.none(), st.just(True)),
)
_KNOWN_KEYS = st.one_of(st.sampled_from(["task_seconds", "loss", "epsilon", "filters", "shared_fraction"]), _NAMES)
set_entry = st.one_of(
    *(st.builds(SetEntry, st.just(section), st.integers(0, 8), value) for section, value in _SECTION_VALUES.items()),
    *(st.builds(SetEntry, st.just(section), _KNOWN_KEYS, value) for section, value in _SECTION_VALUES.items()),
    st.builds(SetEntry, st.sampled_from(MAPS), st.integers(0, 8), st.none(), st.just(True)),
)
set_tensor = st.one_of(
    st.builds(SetTensor, st.integers(0, 8), st.just("dtype"), st.one_of(st.sampled_from(WIRE_DTYPES), HOSTILE)),
    st.builds(SetTensor, st.integers(0, 8), st.just("shape"), _SHAPES),
    st.builds(SetTensor, st.integers(0, 8), st.just("data_offsets"), _OFFSETS),
    st.builds(SetTensor, st.integers(0, 8), st.sampled_from(TENSOR_FIELDS), st.none(), st.just(True)),
    st.builds(RenameTensor, st.integers(0, 8), _NAMES),
    st.builds(AddTensor, _NAMES, _TENSOR_ENTRY),
)
replace_header = st.one_of(
    st.builds(ReplaceHeader, HOSTILE),
    st.builds(ReplaceHeader, st.none(), st.one_of(_TEXT, st.sampled_from(['{"v": 1, "kind": "train_res"', "", "{}"]))),
    st.builds(SetMetadata, HOSTILE),
)
body = st.one_of(
    st.builds(Body, cut=st.integers(0, 64)),
    st.builds(Body, extra=st.binary(min_size=1, max_size=64)),
    st.builds(Body, poke=st.tuples(st.integers(0, 1 << 16), st.integers(0, 255))),
)

MUTATION = st.one_of(
    set_header,
    set_entry,
    set_entry,
    set_tensor,
    set_tensor,
    st.builds(ReorderNames, st.sampled_from(["reverse", "drop", "repeat"])),
    replace_header,
    body,
)
MUTATIONS = st.lists(MUTATION, min_size=1, max_size=3)
