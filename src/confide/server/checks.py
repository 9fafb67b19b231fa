"""Checks every update must pass before it is aggregated. Pure functions."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from confide.errors import UpdateRejected
from confide.records import Arrays, SparseArrays, TrainRes, Update


def _entries(update: Update) -> Iterator[tuple[str, np.ndarray, tuple[int, ...]]]:
    """(name, the values sent, the dense shape) of every array, dense or sparse."""
    if isinstance(update, SparseArrays):
        return ((name, values, update.shape(name)) for name, _, values in update.items())
    return ((name, value, value.shape) for name, value in update.items())


def _squared_norm(value: np.ndarray) -> float | None:
    """Sum of squares, or ``None`` when ``value`` holds NaN or infinity. One pass in the common case: a finite sum
    of squares means every value is finite (a NaN or an infinity makes the sum NaN or infinite); only when it is not
    finite are the values checked, and the sum redone in float64 if float32's range merely overflowed."""
    flat = value.ravel()
    squared = float(np.vdot(flat, flat))
    if np.isfinite(squared):
        return squared
    if not np.isfinite(value).all():
        return None
    return float(np.vdot(flat.astype(np.float64), flat.astype(np.float64)))


CHUNK = 1 << 20
"""Values summed per numpy call on the one-vector path (float32 sums stay exact enough, memory stays small)."""


def _flat_squared_norm(update: Update, global_arrays: Arrays) -> float | None:
    """The sum of squares of an update laid out as the global model and held in one vector (see Arrays.flat), in
    a few numpy calls; None when the update is not such, or holds NaN or infinity (the array-by-array check then
    names the array)."""
    if not isinstance(update, Arrays) or update.flat is None or update.layout() != global_arrays.layout():
        return None
    total = 0.0
    for begin in range(0, update.flat.size, CHUNK):
        part = _squared_norm(update.flat[begin : begin + CHUNK])
        if part is None:
            return None
        total += part
    return total


def check_update(site: str, res: TrainRes, global_arrays: Arrays, *, max_norm: float | None = None) -> float:
    """Raise :class:`UpdateRejected` unless ``res`` fits the global model and is finite (and within ``max_norm``);
    return the update's L2 norm over its floating-point arrays."""
    update = res.update
    expected, got = global_arrays.names(), update.names()
    if expected != got:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        detail = []
        if missing:
            detail.append(f"missing {missing[:5]}")
        if extra:
            detail.append(f"unexpected {extra[:5]}")
        if not detail:
            detail.append("arrays in a different order")
        raise UpdateRejected(site, "array names do not match the global model: " + ", ".join(detail))
    squared = _flat_squared_norm(update, global_arrays)
    for name, value, shape in () if squared is not None else _entries(update):
        ref = global_arrays[name]
        if shape != ref.shape:
            raise UpdateRejected(site, f"array {name!r} has shape {shape}, expected {ref.shape}")
        if value.dtype != ref.dtype:
            raise UpdateRejected(site, f"array {name!r} has dtype {value.dtype}, expected {ref.dtype}")
        if np.issubdtype(value.dtype, np.floating):
            part = _squared_norm(value)
            if part is None:
                raise UpdateRejected(site, f"array {name!r} holds NaN or infinite values")
            squared = (squared or 0.0) + part
    norm = (squared or 0.0) ** 0.5
    if not np.isfinite(norm):
        raise UpdateRejected(site, "update norm overflows")
    if max_norm is not None and norm > max_norm:
        raise UpdateRejected(site, f"update norm {norm:.4g} exceeds the bound {max_norm:.4g}")
    if res.num_examples <= 0:
        raise UpdateRejected(site, "update reports no training examples")
    return norm


def reported_seconds(reported: object, measured: float) -> float:
    """A site's own training time when it reports a plausible one (a number, finite, within a day), else the
    time the transport measured: the field is the site's word and may be anything."""
    if isinstance(reported, int | float) and not isinstance(reported, bool) and 0 <= reported <= 86_400:
        return float(reported)
    return measured
