"""Typed access to a :class:`~confide.records.Control` record's fields, for the protocols that pack their messages
into control records (:mod:`confide.privacy.secagg_wire`): every missing, mistyped, oversized or unexpected field is
a :class:`~confide.errors.PayloadError` naming the field."""

from __future__ import annotations

import math

from confide.errors import PayloadError
from confide.records import Control, ControlValue

__all__ = ["ControlReader"]


class ControlReader:
    """Typed access to a control record's fields; every miss is a PayloadError naming the field."""

    def __init__(self, control: Control, prefixes: tuple[str, ...] = ()) -> None:
        self.control = control
        self.prefixes = prefixes
        self.used: set[str] = set()
        self.arrays_allowed = False

    def _get(self, name: str) -> ControlValue:
        if name not in self.control.fields:
            raise PayloadError(f"{self.control.topic} message lacks the field {name!r}")
        self.used.add(name)
        return self.control.fields[name]

    def _bad(self, name: str, expected: str, value: object) -> PayloadError:
        return PayloadError(f"{self.control.topic} field {name!r} must be {expected}, got {type(value).__name__}")

    def text(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str) or not value:
            raise self._bad(name, "a non-empty string", value)
        return value

    def integer(self, name: str, minimum: int = 0) -> int:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._bad(name, f"an integer >= {minimum}", value)
        return value

    def positive(self, name: str) -> float:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise self._bad(name, "a positive finite number", value)
        return float(value)

    def blob(self, name: str, size: int) -> bytes:
        value = self._get(name)
        if not isinstance(value, bytes) or len(value) != size:
            raise self._bad(name, f"{size} bytes", value)
        return value

    def data(self, name: str, limit: int) -> bytes:
        """Bytes of any length up to ``limit`` (empty included)."""
        value = self._get(name)
        if not isinstance(value, bytes) or len(value) > limit:
            raise self._bad(name, f"at most {limit} bytes", value)
        return value

    def texts(self, name: str) -> tuple[str, ...]:
        value = self._get(name)
        if not isinstance(value, tuple) or not all(isinstance(item, str) and item for item in value):
            raise self._bad(name, "a list of non-empty names", value)
        return tuple(item for item in value if isinstance(item, str))

    def blobs(self, name: str, count: int, size: int, *, exact: bool = True) -> tuple[bytes, ...]:
        """``count`` items of ``size`` bytes each (``exact``) or of at most ``size`` bytes."""
        value = self._get(name)
        if not isinstance(value, tuple) or len(value) != count:
            raise PayloadError(f"{self.control.topic} field {name!r} must list {count} items")
        fits = (lambda item: len(item) == size) if exact else (lambda item: len(item) <= size)
        if not all(isinstance(item, bytes) and fits(item) for item in value):
            raise self._bad(name, f"a list of {'' if exact else 'at most '}{size}-byte items", value)
        return tuple(item for item in value if isinstance(item, bytes))

    def prefixed(self, prefix: str) -> dict[str, ControlValue]:
        return {name[len(prefix) :]: value for name, value in self.control.fields.items() if name.startswith(prefix)}

    def done(self) -> None:
        extra = sorted(n for n in self.control.fields if n not in self.used and not n.startswith(self.prefixes))
        if extra:
            raise PayloadError(f"{self.control.topic} message has unexpected fields {extra[:5]}")
        if not self.arrays_allowed and len(self.control.arrays):
            raise PayloadError(
                f"{self.control.topic} message carries no arrays, this one has {len(self.control.arrays)}"
            )
