"""Typed, frozen records that cross a boundary between the server, the sites and the wire.

No torch and no grpc here: a record holds numpy arrays and plain scalars only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import numpy as np

Scalar = bool | int | float | str
Config = Mapping[str, Scalar]
Metrics = Mapping[str, float]


def _frozen_mapping(values: Mapping[str, Scalar] | None) -> Mapping[str, Scalar]:
    return MappingProxyType(dict(values or {}))


@dataclass(frozen=True, eq=False)
class Arrays:
    """An ordered, read-only mapping of name -> numpy array (a model's parameters or an update)."""

    items_: tuple[tuple[str, np.ndarray], ...]
    _index: Mapping[str, np.ndarray] = field(init=False, repr=False, compare=False)
    # Every array's values, in order, as one read-only vector, when they lie so in one buffer (an update decoded
    # from the wire: one floating dtype, packed back to back); checks and sums then take one numpy call, not one
    # per array. None otherwise.
    flat: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", dict(self.items_))
        if len(self._index) != len(self.items_):
            raise ValueError("array names must be unique")

    @classmethod
    def from_dict(cls, arrays: Mapping[str, np.ndarray], *, copy: bool = False) -> Arrays:
        items: list[tuple[str, np.ndarray]] = []
        for name, value in arrays.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"array names must be non-empty strings, got {name!r}")
            arr = np.array(value, copy=True) if copy else np.asarray(value).view()
            arr.flags.writeable = False
            items.append((name, arr))
        return cls(tuple(items))

    def __len__(self) -> int:
        return len(self.items_)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self.items_)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._index[name]

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def items(self) -> tuple[tuple[str, np.ndarray], ...]:
        return self.items_

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.items_)

    def values(self) -> tuple[np.ndarray, ...]:
        return tuple(value for _, value in self.items_)

    def to_dict(self) -> dict[str, np.ndarray]:
        return dict(self.items_)

    @property
    def nbytes(self) -> int:
        return sum(int(v.nbytes) for _, v in self.items_)

    def layout(self) -> tuple[tuple[str, tuple[int, ...], str], ...]:
        """Each array's name, shape and dtype, in order (computed once)."""
        known: tuple[tuple[str, tuple[int, ...], str], ...] | None = self.__dict__.get("_layout")
        if known is None:
            known = tuple((name, value.shape, value.dtype.str) for name, value in self.items_)
            object.__setattr__(self, "_layout", known)
        return known

    def same_layout(self, other: Arrays) -> bool:
        """True when both hold the same names, shapes and dtypes in the same order."""
        if self.names() != other.names():
            return False
        return all(
            a.shape == b.shape and a.dtype == b.dtype for a, b in zip(self.values(), other.values(), strict=True)
        )

    def allclose(self, other: Arrays, *, atol: float = 0.0, rtol: float = 0.0) -> bool:
        return self.same_layout(other) and all(
            np.allclose(a, b, atol=atol, rtol=rtol) for a, b in zip(self.values(), other.values(), strict=True)
        )


@dataclass(frozen=True, eq=False)
class SparseArrays:
    """An update that carries only some entries of each array (partial sharing): for every array, the flat
    indices of the entries sent (sorted, unique, int64) and their values. An entry not sent is not zero: how the
    server reads it is the aggregation's choice ("no change" or "not reported")."""

    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    indices: Arrays
    values: Arrays

    def __post_init__(self) -> None:
        names = tuple(name for name, _ in self.shapes)
        if names != self.indices.names() or names != self.values.names():
            raise ValueError("a sparse update needs indices and values for exactly the arrays it names, in order")
        for name, shape in self.shapes:
            idx, val = self.indices[name], self.values[name]
            if idx.ndim != 1 or val.ndim != 1 or idx.shape != val.shape:
                raise ValueError(f"sparse array {name!r}: indices and values must be 1-D and of one length")
            if idx.dtype != np.int64:
                raise ValueError(f"sparse array {name!r}: indices must be int64, got {idx.dtype}")
            size = int(np.prod(shape))
            if idx.size and (idx[0] < 0 or idx[-1] >= size or np.any(np.diff(idx) <= 0)):
                raise ValueError(f"sparse array {name!r}: indices must be sorted, unique and inside shape {shape}")

    @classmethod
    def from_dense(cls, arrays: Arrays, keep: Mapping[str, np.ndarray]) -> SparseArrays:
        """Keep, for each array, the entries at the flat indices ``keep[name]`` (any order; made sorted)."""
        shapes, indices, values = [], {}, {}
        for name, value in arrays.items():
            idx = np.unique(np.asarray(keep[name], dtype=np.int64))
            shapes.append((name, tuple(value.shape)))
            indices[name] = idx
            values[name] = value.reshape(-1)[idx]
        return cls(tuple(shapes), Arrays.from_dict(indices), Arrays.from_dict(values))

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return dict(self.shapes)[name]

    def items(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """(name, flat indices, values) for every array."""
        return ((name, self.indices[name], self.values[name]) for name, _ in self.shapes)

    @property
    def nbytes(self) -> int:
        return self.indices.nbytes + self.values.nbytes

    @property
    def fraction(self) -> float:
        """Entries sent over entries in the model."""
        total = sum(int(np.prod(shape)) for _, shape in self.shapes)
        return sum(int(v.size) for v in self.values.values()) / total if total else 0.0

    def without(self, names: frozenset[str]) -> SparseArrays:
        """The same update with no entry sent for the arrays ``names`` (they stay named, with empty indices)."""
        indices = {n: (np.zeros(0, np.int64) if n in names else i) for n, i, _ in self.items()}
        values = {n: (v[:0] if n in names else v) for n, _, v in self.items()}
        return SparseArrays(self.shapes, Arrays.from_dict(indices), Arrays.from_dict(values))

    def densify(self) -> Arrays:
        """The update with every entry not sent set to zero."""
        out: dict[str, np.ndarray] = {}
        for name, idx, val in self.items():
            dense = np.zeros(int(np.prod(self.shape(name))), dtype=val.dtype)
            dense[idx] = val
            out[name] = dense.reshape(self.shape(name))
        return Arrays.from_dict(out)


Update = Arrays | SparseArrays


@dataclass(frozen=True)
class TrainIns:
    """The server's instruction to train: start from ``arrays`` with ``config``."""

    round: int
    arrays: Arrays
    config: Config = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", _frozen_mapping(self.config))


@dataclass(frozen=True)
class TrainRes:
    """A site's answer to :class:`TrainIns`: the update (trained minus received) and what it cost.

    ``meta`` records what happened to the update on its way out (for example the privacy filters
    that ran); it is carried on the wire with the update.
    """

    round: int
    update: Update
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    meta: Config = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_examples < 0:
            raise ValueError("num_examples must be >= 0")
        object.__setattr__(self, "metrics", MappingProxyType({k: float(v) for k, v in self.metrics.items()}))
        object.__setattr__(self, "meta", _frozen_mapping(self.meta))


@dataclass(frozen=True)
class EvalIns:
    """The server's instruction to evaluate ``arrays`` on the site's held-out data."""

    round: int
    arrays: Arrays
    config: Config = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", _frozen_mapping(self.config))


@dataclass(frozen=True)
class EvalRes:
    """A site's evaluation of the model it was sent."""

    round: int
    num_examples: int
    loss: float
    metrics: Metrics = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType({k: float(v) for k, v in self.metrics.items()}))


@dataclass(frozen=True)
class Failure:
    """A site's refusal or failure to answer an instruction, with its reason (never a stack trace)."""

    round: int
    reason: str
    kind: Literal["error", "refused"] = "error"


ControlValue = bool | int | float | str | bytes | tuple[str, ...] | tuple[bytes, ...]


def _check_control_value(name: object, value: object) -> ControlValue:
    if not isinstance(name, str) or not name:
        raise TypeError(f"control field names must be non-empty strings, got {name!r}")
    if isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, tuple) and (
        all(isinstance(v, str) for v in value) or all(isinstance(v, bytes) for v in value)
    ):
        return value
    raise TypeError(
        f"control field {name!r} must be a scalar, bytes, or a tuple of only str or only bytes, "
        f"got {type(value).__name__}"
    )


@dataclass(frozen=True)
class Control:
    """One step of a protocol of several exchanges between the server and a site (secure aggregation): a
    ``topic`` naming the step, named ``fields`` and ``arrays``. What the fields mean belongs to the protocol
    (:mod:`confide.privacy.secagg_wire` packs and checks them); the wire only carries them."""

    round: int
    topic: str
    fields: Mapping[str, ControlValue] = field(default_factory=dict)
    arrays: Arrays = field(default_factory=lambda: Arrays(()))

    def __post_init__(self) -> None:
        if not isinstance(self.topic, str) or not self.topic:
            raise ValueError(f"a control topic must be a non-empty string, got {self.topic!r}")
        checked = {name: _check_control_value(name, value) for name, value in self.fields.items()}
        object.__setattr__(self, "fields", MappingProxyType(checked))


Record = TrainIns | TrainRes | EvalIns | EvalRes | Failure | Control


@dataclass(frozen=True)
class Skipped:
    """An input a site's data reading could not use (a corrupt image, an incomplete row), and why."""

    item: str
    reason: str
