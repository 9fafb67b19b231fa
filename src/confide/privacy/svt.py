"""The sparse vector technique (SVT) as a site privacy filter: share a few noised entries of an update.

Following the federated brain-tumour study of Li et al. (2019), after Lyu et al. (2016) and the analysis of
Lyu, Su and Li ("Understanding the Sparse Vector Technique for Differential Privacy", PVLDB 2017, their
Algorithm 7 with numerical outputs), a site's update ``u`` (trained minus received weights, all its ``n``
entries across every array taken as one vector) leaves the site as follows:

1. clip every entry to ``[-gamma, gamma]`` (``gamma = clip``);
2. draw one noisy threshold ``rho = T + Lap(Delta / eps1)``;
3. visit the entries in a random order (a permutation drawn from the rng, independent of the data) and select
   entry ``j`` when ``|u_j| + Lap(2 c Delta / eps2) >= rho`` (fresh noise for every entry visited), stopping
   after ``c = ceil(fraction * n)`` selections. Each entry is visited at most once, so no entry is selected twice;
4. release each selected entry as ``clip(u_j + Lap(c Delta' / eps3), -gamma, gamma)``, with noise drawn afresh
   (never the selection noise, whose reuse is a known fault of SVT variants);
5. send nothing else: the entries not selected are absent from the sparse update (the server reads them as zero
   or "not reported", as its aggregation chooses). No value leaves without its release noise.

Neighbouring updates and sensitivities. The protected object is the site's whole update: two updates are
neighbours when they are any two clipped updates (this covers any change to the site's data, a patient's record
included, however the training maps data to weights, so it needs no bound on how training reacts to one record).
After clipping every entry lies in ``[-gamma, gamma]``, so

- the selection query ``q_j = |u_j|`` lies in ``[0, gamma]``: it changes by at most ``Delta = gamma`` between
  neighbours. SVT's proof needs only that each query is ``Delta``-sensitive (all of them may change at once), and
  the queries are not monotonic (some may rise while others fall), hence ``2 c Delta`` in the query noise (the
  non-monotonic case of Algorithm 7). Threshold plus selection cost ``eps1 + eps2`` for up to ``c`` selections;
- a released value ``u_j`` lies in ``[-gamma, gamma]``: it changes by at most ``Delta' = 2 gamma``. Each of the at
  most ``c`` released values gets ``Lap(c Delta' / eps3)``, i.e. is ``eps3 / c``-DP, and ``c`` of them compose to
  ``eps3``. The clip after the noise is post-processing.

By basic composition one round costs ``epsilon = eps1 + eps2 + eps3`` (pure epsilon-DP, delta = 0), whatever the
number of entries actually selected.

Budget split. By default half the budget goes to the release (``eps3 = epsilon / 2``, this module's own choice:
the papers fix no share for it) and the other half to the selection, split ``eps1 : eps2 = 1 : (2c)^(2/3)``. That
ratio is the one of Lyu, Su and Li for non-monotonic queries: it minimises ``Var(rho) + Var(nu) = 2 (Delta /
eps1)^2 + 2 (2 c Delta / eps2)^2`` at fixed ``eps1 + eps2``. Since it depends on ``c``, hence on the model's size,
the three epsilons are known only once the update is seen (:func:`svt_epsilons`). An explicit
``split=(s1, s2, s3)`` (positive, summing to 1) sets ``eps_i = s_i * epsilon`` instead.

Threshold. ``T`` compares with ``|u_j|``, which lies in ``[0, gamma]``; it must lie in that range too (above it,
no entry could pass without noise). Its default is ``gamma / 2``: share entries whose clipped magnitude is at
least half the clip. With realistic budgets and models the query noise ``2 c gamma / eps2`` dwarfs ``gamma`` and
the selection is nearly uniform at random; SVT then mostly decides how many entries travel, not which.

Integer arrays (buffers such as counters) take part like any other entries; their released values are rounded
(post-processing) and kept in ``[-floor(gamma), floor(gamma)]``. Boolean, unsigned and complex arrays are refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from numbers import Real

import numpy as np

from confide.privacy.spend import Spend
from confide.records import Arrays, SparseArrays, TrainRes

_CHUNK = 1 << 16
"""Entries visited per batch of selection noise (fixed, so that a seed gives one output on every machine)."""

_SPLIT_TOLERANCE = 1e-9


def _real(name: str, value: object) -> float:
    """``value`` as a finite float, or ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"svt: {name} must be a real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"svt: {name} must be finite, got {value!r}")
    return out


def _check_split(split: object) -> tuple[float, float, float]:
    if isinstance(split, str | bytes) or not isinstance(split, Sequence) or len(split) != 3:
        raise ValueError(f"svt: split must be three shares (eps1, eps2, eps3), got {split!r}")
    shares = tuple(_real("split", share) for share in split)
    if any(share <= 0 for share in shares):
        raise ValueError(f"svt: split shares must all be > 0, got {split!r}")
    if abs(sum(shares) - 1.0) > _SPLIT_TOLERANCE:
        raise ValueError(f"svt: split shares must sum to 1, got {split!r} (sum {sum(shares)!r})")
    return shares[0], shares[1], shares[2]


def max_selected(fraction: float, n_entries: int) -> int:
    """``c = ceil(fraction * n)``, the most entries shared (at least 1, at most ``n``); a product that float
    rounding pushes just above an integer (``0.1 * 30``) is not rounded up."""
    if n_entries < 1:
        raise ValueError(f"svt: the update must hold at least one entry, got {n_entries}")
    return min(n_entries, max(1, math.ceil(fraction * n_entries * (1.0 - 1e-12))))


def svt_epsilons(
    epsilon: float, fraction: float, n_entries: int, split: tuple[float, float, float] | None = None
) -> tuple[float, float, float]:
    """``(eps1, eps2, eps3)`` for the threshold, the selection and the release; they sum to ``epsilon``.

    With ``split=None``: ``eps3 = epsilon / 2`` and ``eps1 : eps2 = 1 : (2c)^(2/3)`` with
    ``c = ceil(fraction * n_entries)`` (Lyu, Su and Li 2017, non-monotonic queries). Otherwise ``eps_i = split_i *
    epsilon``. ``eps3`` is computed as the rest, so the three add up to ``epsilon``.
    """
    epsilon = _real("epsilon", epsilon)
    if epsilon <= 0:
        raise ValueError(f"svt: epsilon must be > 0, got {epsilon!r}")
    fraction = _real("fraction", fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"svt: fraction must be in (0, 1], got {fraction!r}")
    if split is None:
        c = max_selected(fraction, int(n_entries))
        selection = epsilon / 2.0
        eps1 = selection / (1.0 + (2.0 * c) ** (2.0 / 3.0))
        eps2 = selection - eps1
    else:
        s1, s2, _ = _check_split(split)
        eps1, eps2 = s1 * epsilon, s2 * epsilon
    eps3 = epsilon - eps1 - eps2
    if not (eps1 > 0 and eps2 > 0 and eps3 > 0):
        raise ValueError(f"svt: the split leaves an epsilon <= 0: {(eps1, eps2, eps3)!r}")
    return eps1, eps2, eps3


def _dtype_bound(dtype: np.dtype, gamma: float) -> float:
    """The largest value of ``dtype`` that is <= ``gamma``: a released value cast back stays in ``[-gamma, gamma]``."""
    if np.issubdtype(dtype, np.integer):
        return float(math.floor(gamma))
    bound = dtype.type(gamma)
    if float(bound) > gamma:
        bound = np.nextafter(bound, dtype.type(0))
    return float(bound)


class SparseVectorFilter:
    """Releases at most ``ceil(fraction * n)`` noised, clipped entries of the update, chosen by the sparse vector
    technique; ``epsilon`` per round in all (pure DP). See the module's documentation for the mechanism."""

    name = "svt"
    spends_privacy = True

    def __init__(
        self,
        epsilon: float,
        fraction: float,
        clip: float,
        threshold: float | None = None,
        split: tuple[float, float, float] | None = None,
    ) -> None:
        self.epsilon = _real("epsilon", epsilon)
        if self.epsilon <= 0:
            raise ValueError(f"svt: epsilon must be > 0, got {epsilon!r}")
        self.fraction = _real("fraction", fraction)
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"svt: fraction must be in (0, 1], got {fraction!r}")
        self.clip = _real("clip", clip)
        if self.clip <= 0:
            raise ValueError(f"svt: clip must be > 0, got {clip!r}")
        self.threshold = self.clip / 2.0 if threshold is None else _real("threshold", threshold)
        if not 0.0 <= self.threshold <= self.clip:
            raise ValueError(f"svt: threshold must be in [0, clip] = [0, {self.clip!r}], got {threshold!r}")
        self.split = None if split is None else _check_split(split)
        if self.split is not None:
            svt_epsilons(self.epsilon, self.fraction, 1, self.split)  # every epsilon > 0
        self._entries: int | None = None

    @property
    def query_sensitivity(self) -> float:
        """``Delta``: how much ``|u_j|`` of a clipped entry can change between neighbouring updates."""
        return self.clip

    @property
    def release_sensitivity(self) -> float:
        """``Delta'``: how much a clipped entry ``u_j`` can change between neighbouring updates."""
        return 2.0 * self.clip

    def epsilons(self, n_entries: int) -> tuple[float, float, float]:
        """``(eps1, eps2, eps3)`` for an update of ``n_entries`` entries."""
        return svt_epsilons(self.epsilon, self.fraction, n_entries, self.split)

    def spend(self, n_entries: int | None = None) -> Spend:
        """The per-round cost, ``epsilon`` in all. The three epsilons are in ``params`` when they are known: with an
        explicit split, or for ``n_entries`` (default: the size of the last update filtered)."""
        params: dict[str, float | int | str] = {
            "epsilon": self.epsilon,
            "fraction": self.fraction,
            "clip": self.clip,
            "threshold": self.threshold,
            "split": "lyu2017" if self.split is None else ":".join(f"{s:g}" for s in self.split),
            "delta": 0.0,
        }
        entries = n_entries if n_entries is not None else self._entries
        if self.split is not None or entries is not None:
            eps1, eps2, eps3 = self.epsilons(entries if entries is not None else 1)
            params.update(epsilon_1=eps1, epsilon_2=eps2, epsilon_3=eps3)
            if entries is not None:
                params.update(entries=int(entries), max_shared=max_selected(self.fraction, int(entries)))
        return Spend(mechanism="svt", params=params, epsilon=self.epsilon)

    def apply(self, res: TrainRes, rng: np.random.Generator) -> TrainRes:
        update = res.update
        if isinstance(update, SparseArrays):
            raise ValueError("svt: the update is already sparse; SVT must run on the dense update")
        if not isinstance(update, Arrays):
            raise ValueError(f"svt: the update must be Arrays, got {type(update).__name__}")
        flat = _flatten(update)
        n = int(flat.size)
        c = max_selected(self.fraction, n)
        eps1, eps2, eps3 = self.epsilons(n)
        gamma = self.clip
        np.clip(flat, -gamma, gamma, out=flat)

        selected = _select(np.abs(flat), c, self.threshold, self.query_sensitivity, eps1, eps2, rng)
        if np.unique(selected).size != selected.size or selected.size > c:
            raise RuntimeError("svt: selection picked an entry twice or more than c entries")  # never: fail closed
        noise = rng.laplace(0.0, c * self.release_sensitivity / eps3, size=selected.size)
        released = np.clip(flat[selected] + noise, -gamma, gamma)

        order = np.argsort(selected, kind="stable")
        sparse = _to_sparse(update, selected[order], released[order], gamma)
        self._entries = n
        meta = {**res.meta, "svt_epsilon": self.epsilon, "svt_shared": selected.size / n}
        return replace(res, update=sparse, meta=meta)


def _flatten(update: Arrays) -> np.ndarray:
    """Every entry of the update as one float64 vector (a copy); refuses non-finite values and odd dtypes."""
    parts: list[np.ndarray] = []
    for name, value in update.items():
        dtype = value.dtype
        if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.signedinteger)):
            raise ValueError(f"svt: array {name!r} has dtype {dtype}; only float and signed integer updates")
        part = np.asarray(value, dtype=np.float64).reshape(-1)
        if not np.isfinite(part).all():
            raise ValueError(f"svt: array {name!r} holds NaN or infinite values")
        parts.append(part)
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)
    if flat.size == 0:
        raise ValueError("svt: the update holds no entries")
    return flat


def _select(
    query: np.ndarray,
    c: int,
    threshold: float,
    sensitivity: float,
    eps1: float,
    eps2: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """SVT: flat indices, in visiting order, of at most ``c`` entries whose noisy query passes the noisy threshold.

    Visiting in batches draws the same noise as visiting one entry at a time; the noise of entries after the
    ``c``-th selection in the last batch is drawn but never used."""
    n = query.size
    noisy_threshold = threshold + rng.laplace(0.0, sensitivity / eps1)
    query_scale = 2.0 * c * sensitivity / eps2
    order = rng.permutation(n)
    picked: list[np.ndarray] = []
    count = 0
    for start in range(0, n, _CHUNK):
        visit = order[start : start + _CHUNK]
        nu = rng.laplace(0.0, query_scale, size=visit.size)
        hits = visit[query[visit] + nu >= noisy_threshold][: c - count]
        picked.append(hits)
        count += hits.size
        if count >= c:
            break
    return np.concatenate(picked).astype(np.int64) if picked else np.zeros(0, dtype=np.int64)


def _to_sparse(update: Arrays, selected: np.ndarray, released: np.ndarray, gamma: float) -> SparseArrays:
    """Split sorted flat indices over the arrays; values cast back to each array's dtype, kept in range."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    indices: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    start = 0
    for name, value in update.items():
        stop = start + int(value.size)
        lo, hi = np.searchsorted(selected, [start, stop])
        bound = _dtype_bound(value.dtype, gamma)
        vals = released[lo:hi]
        if np.issubdtype(value.dtype, np.integer):
            vals = np.rint(vals)
        shapes.append((name, tuple(value.shape)))
        indices[name] = (selected[lo:hi] - start).astype(np.int64)
        values[name] = np.clip(vals.astype(value.dtype), -bound, bound).astype(value.dtype)
        start = stop
    return SparseArrays(tuple(shapes), Arrays.from_dict(indices), Arrays.from_dict(values))
