"""Partial sharing: send only a fraction of an update's entries, as a sparse update (indices and values).

This is sparsification, not differential privacy: it reduces what leaves the site and the bandwidth, but the
entries it sends are exact, and which entries are largest says something about the data. It reports no epsilon.
Run it after any noise-adding mechanism (selecting on noised values is post-processing); a chain that noises
after selecting is refused, since the choice of entries would then escape the noise.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np

from confide.records import Arrays, SparseArrays, TrainRes

Select = Literal["topk", "random"]


class Sparsify:
    """Keep the ``fraction`` of entries with the largest magnitude (``topk``) or a uniform random ``fraction``."""

    name = "sparsify"
    spends_privacy = False

    def __init__(self, fraction: float, select: Select = "topk") -> None:
        if not isinstance(fraction, int | float) or not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"sparsify: fraction must be in (0, 1], got {fraction!r}")
        if select not in ("topk", "random"):
            raise ValueError(f"sparsify: select must be 'topk' or 'random', got {select!r}")
        self.fraction = float(fraction)
        self.select = select

    def apply(self, res: TrainRes, rng: np.random.Generator) -> TrainRes:
        if isinstance(res.update, SparseArrays):
            raise ValueError("sparsify: the update is already sparse")
        keep = chosen_entries(res.update, self.fraction, self.select, rng)
        sparse = SparseArrays.from_dense(res.update, keep)
        meta = {**res.meta, "shared_fraction": sparse.fraction, "sparsify": f"{self.select}:{self.fraction:g}"}
        return replace(res, update=sparse, meta=meta)


def chosen_entries(update: Arrays, fraction: float, select: Select, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Flat indices to keep in each array: ``ceil(fraction * n)`` entries over the whole update."""
    sizes = np.array([value.size for value in update.values()], dtype=np.int64)
    total = int(sizes.sum())
    k = min(total, int(np.ceil(fraction * total - 1e-9)))  # 0.1 * 30 is 3.0000000000000004
    if select == "random":
        picked = rng.choice(total, size=k, replace=False)
    else:
        magnitude = np.concatenate([np.abs(np.asarray(v, dtype=np.float64)).reshape(-1) for v in update.values()])
        if not np.isfinite(magnitude).all():
            raise ValueError("sparsify: the update holds NaN or infinite values")
        picked = np.argpartition(magnitude, total - k)[total - k :] if k < total else np.arange(total)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    picked = np.sort(picked)
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(update.names()):
        lo, hi = np.searchsorted(picked, [starts[i], starts[i + 1]])
        out[name] = (picked[lo:hi] - starts[i]).astype(np.int64)
    return out
