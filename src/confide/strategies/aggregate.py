"""Pure aggregation math on :class:`~confide.records.Arrays`.

Accumulation is streaming: :func:`accumulate` folds one update at a time into a running sum, so
the server holds one accumulator, not one copy per site.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from confide.records import Arrays, SparseArrays


def _acc_dtype(dtype: np.dtype) -> np.dtype:
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


CHUNK = 1 << 20
"""Values added per numpy call on the one-vector path (its temporaries stay a few MB, whatever the model)."""


class Accumulator(dict[str, np.ndarray]):
    """An accumulator whose arrays are views of one zeroed vector, in the model's order, so that an update held
    in one vector too (Arrays.flat) is added in a few numpy calls rather than one per array."""

    def __init__(self, arrays: Arrays, dtype: np.dtype) -> None:
        self.flat = np.zeros(sum(value.size for value in arrays.values()), dtype=dtype)
        self.layout = arrays.layout()
        views: list[tuple[str, np.ndarray]] = []
        begin = 0
        for name, value in arrays.items():
            views.append((name, self.flat[begin : begin + value.size].reshape(value.shape)))
            begin += value.size
        super().__init__(views)
        self._views = tuple(view for _, view in views)

    def takes_whole(self, update: Arrays) -> bool:
        """Whether ``update`` can be added as one vector: laid out as this accumulator, none of whose arrays has
        been replaced since."""
        return (
            update.flat is not None
            and update.flat.dtype == self.flat.dtype
            and update.layout() == self.layout
            and all(self[name] is view for name, view in zip(self, self._views, strict=True))
        )


def zeros_like(arrays: Arrays) -> dict[str, np.ndarray]:
    """A writable accumulator with one zero buffer per array (views of one vector when every array has the same
    floating dtype: see :class:`Accumulator`)."""
    dtypes = {value.dtype for value in arrays.values()}
    if len(dtypes) == 1 and np.issubdtype(next(iter(dtypes)), np.floating):
        return Accumulator(arrays, next(iter(dtypes)))
    return {name: np.zeros(value.shape, dtype=_acc_dtype(value.dtype)) for name, value in arrays.items()}


def accumulate(acc: dict[str, np.ndarray], update: Arrays, weight: float) -> None:
    """Add ``weight * update`` into ``acc`` in place (no temporary copy of the model). An update read from a file
    map (the server's held updates, server/spill.py) gives back each array's pages once it is added, so folding it
    takes no model-sized memory."""
    if isinstance(acc, Accumulator) and acc.takes_whole(update):
        assert update.flat is not None
        for begin in range(0, acc.flat.size, CHUNK):
            target, value = acc.flat[begin : begin + CHUNK], update.flat[begin : begin + CHUNK]
            if weight == 1.0:
                np.add(target, value, out=target)
            else:
                target += value * target.dtype.type(weight)
            _done_with(value)
        return
    for name, value in update.items():
        target = acc[name]
        if weight == 1.0:
            np.add(target, value, out=target, casting="unsafe")
        else:
            target += np.asarray(value, dtype=target.dtype) * target.dtype.type(weight)
        _done_with(value)


def _done_with(value: np.ndarray) -> None:
    """Give back the resident pages of ``value`` when it is a view of a read-only file map (read again from the
    file should it be read again); anything else is left alone."""
    base: object = value
    while isinstance(base, np.ndarray):
        base = base.base
    if not isinstance(base, memoryview) or not isinstance(base.obj, mmap.mmap) or value.nbytes < mmap.PAGESIZE:
        return
    start = value.ctypes.data - np.frombuffer(base, dtype=np.uint8).ctypes.data
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    last = (start + value.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if start >= 0 and last > first:
        base.obj.madvise(mmap.MADV_DONTNEED, first, last - first)


def accumulate_sparse(
    acc: dict[str, np.ndarray], update: SparseArrays, weight: float, counts: dict[str, np.ndarray] | None = None
) -> None:
    """Add ``weight * update`` at the entries the sparse update carries; with ``counts``, also add ``weight``
    to the count of each entry carried (for the "not reported" reading of the entries it left out)."""
    for name, idx, val in update.items():
        flat = acc[name].reshape(-1)
        flat[idx] += np.asarray(val, dtype=flat.dtype) * flat.dtype.type(weight)
        if counts is not None:
            counts[name].reshape(-1)[idx] += weight


def count_all(counts: dict[str, np.ndarray], weight: float) -> None:
    """A dense update reports every entry: add ``weight`` to every count."""
    for value in counts.values():
        value += weight


def divide_by_counts(acc: dict[str, np.ndarray], counts: Mapping[str, np.ndarray]) -> None:
    """Each entry's sum over the total weight of the updates that reported it (no report: no change)."""
    for name, value in acc.items():
        count = counts[name]
        np.divide(value, count, out=value, where=count > 0, casting="unsafe")
        value[count <= 0] = 0


def scale(acc: dict[str, np.ndarray], factor: float) -> None:
    """Multiply every buffer of ``acc`` by ``factor`` in place."""
    for value in acc.values():
        value *= value.dtype.type(factor)


def apply_delta(base: Arrays, delta: Mapping[str, np.ndarray]) -> Arrays:
    """``base + delta``, keeping each array's dtype (integer buffers are rounded)."""
    out: dict[str, np.ndarray] = {}
    for name, value in base.items():
        step = delta[name]
        if np.issubdtype(value.dtype, np.floating):
            out[name] = (value + step).astype(value.dtype, copy=False)
        else:
            out[name] = np.rint(value + step).astype(value.dtype)
    return Arrays.from_dict(out)


def apply_delta_in_place(base: Arrays, delta: dict[str, np.ndarray]) -> Arrays:
    """``base + delta`` like :func:`apply_delta`, written into ``delta``'s buffers where dtypes allow.

    ``delta`` is consumed: the server's aggregate becomes the next model without a third copy of it.
    """
    out: dict[str, np.ndarray] = {}
    for name, value in base.items():
        step = delta.pop(name)
        if step.dtype == value.dtype and np.issubdtype(value.dtype, np.floating):
            np.add(step, value, out=step)
            out[name] = step
        elif np.issubdtype(value.dtype, np.floating):
            out[name] = (value + step).astype(value.dtype, copy=False)
        else:
            out[name] = np.rint(value + step).astype(value.dtype)
    return Arrays.from_dict(out)


def weighted_mean(updates: Iterable[tuple[Arrays, float]]) -> dict[str, np.ndarray]:
    """Reference weighted mean of updates: ``sum(w_i * u_i) / sum(w_i)``."""
    acc: dict[str, np.ndarray] | None = None
    total = 0.0
    for update, weight in updates:
        if weight < 0:
            raise ValueError(f"weights must be >= 0, got {weight}")
        if acc is None:
            acc = zeros_like(update)
        accumulate(acc, update, weight)
        total += weight
    if acc is None or total <= 0:
        raise ValueError("weighted_mean needs at least one update with positive weight")
    scale(acc, 1.0 / total)
    return acc


def weighted_metrics(items: Iterable[tuple[Mapping[str, float], float]]) -> dict[str, float]:
    """Weighted mean of each metric over the results that report it."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for metrics, weight in items:
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value) * weight
            weights[key] = weights.get(key, 0.0) + weight
    return {key: sums[key] / weights[key] for key in sums if weights[key] > 0}


def coordinate_median(updates: Sequence[Arrays]) -> dict[str, np.ndarray]:
    """Coordinate-wise median of updates (robust to a minority of arbitrary updates)."""
    if not updates:
        raise ValueError("coordinate_median needs at least one update")
    return {
        name: np.median(np.stack([u[name] for u in updates]), axis=0).astype(_acc_dtype(first.dtype))
        for name, first in updates[0].items()
    }


def trimmed_mean(updates: Sequence[Arrays], trim_fraction: float) -> dict[str, np.ndarray]:
    """Coordinate-wise mean after dropping the ``floor(trim_fraction * n)`` largest and smallest values."""
    if not updates:
        raise ValueError("trimmed_mean needs at least one update")
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    cut = int(np.floor(trim_fraction * len(updates)))
    out: dict[str, np.ndarray] = {}
    for name, first in updates[0].items():
        stacked = np.sort(np.stack([u[name] for u in updates]), axis=0)
        kept = stacked[cut : len(updates) - cut]
        out[name] = kept.mean(axis=0).astype(_acc_dtype(first.dtype))
    return out


def model_size(like: Arrays) -> int:
    """The number of entries of all arrays together (the length of :func:`flatten`'s vector)."""
    return sum(int(value.size) for value in like.values())


def flatten(update: Arrays, like: Arrays) -> np.ndarray:
    """One float64 vector of ``update``'s entries, array after array in ``like``'s order (each in C order).

    Refuses an update whose names or shapes differ from ``like``'s: a vector is only meaningful in one layout."""
    if update.names() != like.names():
        raise ValueError(f"the update's arrays {list(update.names())[:5]} are not the model's {list(like.names())[:5]}")
    for name, value in like.items():
        if update[name].shape != value.shape:
            raise ValueError(f"array {name!r} has shape {update[name].shape}, the model's is {value.shape}")
    if not len(like):
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([np.asarray(update[name], dtype=np.float64).reshape(-1) for name in like.names()])


def unflatten(vector: np.ndarray, like: Arrays) -> dict[str, np.ndarray]:
    """The inverse of :func:`flatten`: float64 arrays shaped as ``like``'s (views into ``vector``)."""
    if vector.shape != (model_size(like),):
        raise ValueError(f"a vector of shape {vector.shape} does not fit a model of {model_size(like)} entries")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, value in like.items():
        out[name] = np.asarray(vector[offset : offset + value.size], dtype=np.float64).reshape(value.shape)
        offset += value.size
    return out
