"""A site's privacy ledger: every mechanism it ran, per round, and the (epsilon, delta) spent so far.

Composition is done properly, never by adding up epsilons where a tighter bound exists:

- Gaussian releases (client-level DP-FedAvg, DP-SGD steps) are composed with two accountants of ``dp-accounting``,
  the Renyi-DP accountant and the privacy-loss-distribution (PLD) accountant with pessimistic discretisation
  (subsampled where a sampling rate below 1 applies); both give an upper bound on epsilon at the ledger's delta,
  and the ledger reports the smaller (PLD is usually 5-15 % tighter for many subsampled steps);
- pure epsilon-DP releases (the sparse vector technique, Laplace) add their epsilons (basic composition, delta 0);
- the two parts add: an (eps_g, delta) mechanism composed with an (eps_p, 0) one is (eps_g + eps_p, delta)-DP.

The ledger is written to a JSON file after every round, so a site restarted mid-job keeps counting from where it
was. A deployed site keeps one ledger for its kit (``KIT/ledger.json``), across every job it takes part in: a
renamed or new job does not start from zero. The ledger stores the releases themselves, so it can be read at any
delta (a stricter one later gives a larger epsilon for the same releases). ``confide privacy report RUN`` prints
the ledgers of a run as a table.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from confide.errors import BUDGET_REFUSAL, ConfigError
from confide.privacy.spend import Spend

# The accountant reports, at warning level, each small Renyi order it leaves out of a bound; the bound stays valid.
logging.getLogger("absl").setLevel(logging.ERROR)


@functools.lru_cache(maxsize=1)
def _orders() -> tuple[float, ...]:
    """The RDP accountant's orders. dp-accounting (and scipy under it) is imported only when a ledger composes
    something: a job without privacy never loads it."""
    from dp_accounting import rdp

    return tuple(rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS)


@dataclass(frozen=True)
class Entry:
    round: int
    mechanism: str
    params: dict[str, Any]
    epsilon_round: float
    epsilon_total: float
    delta: float
    job: str = ""


@dataclass
class Ledger:
    """The spends of one site, with an optional budget (epsilon at ``delta``) that no round may exceed."""

    site: str
    delta: float = 1e-5
    budget: float | None = None
    path: Path | None = None
    gaussian: list[Spend] = field(default_factory=list)
    pure_epsilon: float = 0.0
    entries: list[Entry] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 < self.delta < 1:
            raise ConfigError(f"privacy ledger of {self.site}: delta must be in (0, 1), got {self.delta}")
        if self.budget is not None and not self.budget > 0:
            raise ConfigError(f"privacy ledger of {self.site}: the budget must be > 0, got {self.budget}")

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far, at the ledger's delta."""
        return _epsilon(self.gaussian, self.pure_epsilon, self.delta)

    def after(self, spends: Sequence[Spend]) -> float:
        """Epsilon spent once ``spends`` are added (what a round would bring the total to)."""
        gaussian = [*self.gaussian, *(s for s in spends if s.is_gaussian)]
        pure = self.pure_epsilon + sum(s.epsilon for s in spends if not s.is_gaussian)
        return _epsilon(gaussian, pure, self.delta)

    def refusal(self, spends: Sequence[Spend]) -> str | None:
        """Why a round with these spends may not run (it would exceed the budget), or ``None``."""
        if self.budget is None or not spends:
            return None
        total = self.after(spends)
        if total > self.budget:
            return (
                f"{BUDGET_REFUSAL} this round would bring epsilon to {total:.3g} (delta {self.delta:g}), over the "
                f"budget of {self.budget:g}; {self.epsilon:.3g} spent so far"
            )
        return None

    def record(self, round: int, spends: Sequence[Spend], *, job: str = "") -> list[Entry]:
        """Add a round's spends (of ``job``), in the order the mechanisms ran, and save."""
        out: list[Entry] = []
        for spend in spends:
            before = self.epsilon
            if spend.is_gaussian:
                self.gaussian.append(spend)
            else:
                self.pure_epsilon += spend.epsilon
            total = self.epsilon
            params = {**spend.params, "noise_multiplier": spend.noise_multiplier} if spend.is_gaussian else {}
            if spend.is_gaussian:
                params.update(sampling_rate=spend.sampling_rate, steps=spend.steps)
            entry = Entry(round, spend.mechanism, {**spend.params, **params}, total - before, total, self.delta, job)
            self.entries.append(entry)
            out.append(entry)
        self.save()
        return out

    # -- persistence ---------------------------------------------------------------------------
    def document(self) -> dict[str, Any]:
        """The ledger as JSON-ready data (what :meth:`save` writes)."""
        return {
            "site": self.site,
            "delta": self.delta,
            "budget": self.budget,
            "gaussian": [_spend_document(s) for s in self.gaussian],
            "pure_epsilon": self.pure_epsilon,
            "entries": [asdict(e) for e in self.entries],
        }

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.document(), indent=1))
        os.replace(tmp, self.path)

    @classmethod
    def from_document(
        cls, site: str, document: Any, *, delta: float, budget: float | None, path: Path | None = None, where: str = ""
    ) -> Ledger:
        """The ledger a :meth:`document` describes, for ``site`` (``where`` names its source in errors): a ledger
        read back from a file, or sent by the process that kept it (the Ray engine's actors)."""
        source = where or f"of {site}"
        try:
            gaussian = [Spend(**s) for s in document["gaussian"]]
            entries = [Entry(**e) for e in document["entries"]]
            pure = float(document["pure_epsilon"])
            stored_site = str(document["site"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"privacy ledger {source} cannot be read: {exc}") from exc
        if stored_site != site:
            raise ConfigError(f"privacy ledger {source} is site {stored_site!r}'s, not {site!r}'s")
        if not math.isfinite(pure) or pure < 0:
            raise ConfigError(f"privacy ledger {source} holds an impossible pure epsilon {pure!r}")
        return cls(site, delta, budget, path, gaussian, pure, entries)

    @classmethod
    def open(cls, site: str, path: Path, *, delta: float, budget: float | None) -> Ledger:
        """The ledger stored at ``path`` (continuing its count), or a new one there."""
        if not path.exists():
            return cls(site=site, delta=delta, budget=budget, path=path)
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"privacy ledger {path} cannot be read: {exc}") from exc
        return cls.from_document(site, document, delta=delta, budget=budget, path=path, where=str(path))

    @classmethod
    def open_kit(cls, site: str, kit: Path, *, delta: float, budget: float | None) -> Ledger:
        """The one ledger of a site's kit (``KIT/ledger.json``), across all its jobs. Ledgers that an older Confide
        kept per job (``KIT/ledgers/*.json``) are folded in the first time, so what they spent still counts."""
        path = kit / "ledger.json"
        if path.exists():
            return cls.open(site, path, delta=delta, budget=budget)
        ledger = cls(site=site, delta=delta, budget=budget, path=path)
        for old in sorted((kit / "ledgers").glob("*.json")):
            earlier = cls.open(site, old, delta=delta, budget=None)
            ledger.gaussian.extend(earlier.gaussian)
            ledger.pure_epsilon += earlier.pure_epsilon
            ledger.entries.extend(replace(e, job=e.job or old.stem) for e in earlier.entries)
        if ledger.entries:
            ledger.save()
        return ledger


def _spend_document(spend: Spend) -> dict[str, Any]:
    return {
        "mechanism": spend.mechanism,
        "params": dict(spend.params),
        "epsilon": spend.epsilon,
        "noise_multiplier": spend.noise_multiplier,
        "sampling_rate": spend.sampling_rate,
        "steps": spend.steps,
    }


@functools.lru_cache(maxsize=1024)
def _unit_rdp(noise_multiplier: float, sampling_rate: float) -> tuple[float, ...]:
    """The Renyi-DP of one (subsampled) Gaussian release at the accountant's orders: computed once per distinct
    mechanism, since the subsampled case is costly and rounds repeat the same mechanism."""
    import dp_accounting
    from dp_accounting import rdp

    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
    accountant = rdp.RdpAccountant(_orders())
    accountant.compose(event, 1)
    return tuple(float(v) for v in accountant._rdp)  # composition adds these: k releases cost k times them


PLD_INTERVAL = 1e-2
"""Discretisation of the privacy-loss distributions (pessimistic: a coarser grid only loosens the bound)."""
PLD_UP_TO = 100.0
"""The PLD accountant is consulted only below this RDP epsilon (above it the bound means nothing anyway)."""


@functools.lru_cache(maxsize=4096)
def _pld_epsilon(groups: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Epsilon at ``delta`` of releases grouped as (noise multiplier, sampling rate, count), by the PLD accountant."""
    import dp_accounting
    from dp_accounting import pld

    accountant = pld.PLDAccountant(value_discretization_interval=PLD_INTERVAL)
    for noise_multiplier, sampling_rate, count in groups:
        event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
        if sampling_rate < 1.0:
            event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
        accountant.compose(event, count)
    return float(accountant.get_epsilon(delta))


def _groups(gaussian: Sequence[Spend]) -> tuple[tuple[float, float, int], ...]:
    counts: dict[tuple[float, float], int] = {}
    for spend in gaussian:
        key = (spend.noise_multiplier, spend.sampling_rate)
        counts[key] = counts.get(key, 0) + spend.steps
    return tuple(sorted((z, q, n) for (z, q), n in counts.items()))


def _epsilon(gaussian: Sequence[Spend], pure: float, delta: float) -> float:
    if not gaussian:
        return pure
    groups = _groups(gaussian)
    from dp_accounting import rdp

    total = np.zeros(len(_orders()))
    for z, q, count in groups:
        total += count * np.asarray(_unit_rdp(z, q))
    epsilon = float(rdp.rdp_privacy_accountant.compute_epsilon(_orders(), total, delta)[0])
    if math.isfinite(epsilon) and epsilon < PLD_UP_TO:
        with contextlib.suppress(ValueError, ArithmeticError, MemoryError):  # the RDP bound stands on its own
            epsilon = min(epsilon, _pld_epsilon(groups, delta))
    return epsilon + pure if math.isfinite(epsilon) else math.inf


def read_ledgers(run: Path) -> list[dict[str, Any]]:
    """The ledgers stored under a run folder (``RUN/privacy/*.json``), or a site kit's own (``KIT/ledger.json``,
    across all its jobs), for reports. A kit (a folder with ``site.yaml``) whose jobs spent no privacy has no
    ledger: none is returned. A kit still holding an older Confide's per-job ledgers (``KIT/ledgers/*.json``,
    folded into ``ledger.json`` by the next job that spends) is read as one ledger, each entry named by its job."""
    folder = run / "privacy"
    if (run / "ledger.json").is_file():
        paths = [run / "ledger.json"]
    elif folder.is_dir():
        paths = sorted(folder.glob("*.json"))
    elif (run / "site.yaml").is_file():
        return _older_kit_ledger(sorted((run / "ledgers").glob("*.json")))
    else:
        raise ConfigError(
            f"{run} holds no privacy ledger (neither {folder} nor {run / 'ledger.json'}): give a run's report "
            "folder (report.out) or a site's kit"
        )
    return [_read_document(path) for path in paths]


def _read_document(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"privacy ledger {path} cannot be read: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("entries", []), list):
        raise ConfigError(f"privacy ledger {path} is not a ledger (an object with a list of entries)")
    return document


def _older_kit_ledger(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """A kit's per-job ledgers of an older Confide, as the one ledger a report shows (no file is written)."""
    if not paths:
        return []
    documents = [_read_document(path) for path in paths]
    entries = [
        {**entry, "job": entry.get("job") or path.stem}
        for path, document in zip(paths, documents, strict=True)
        for entry in document.get("entries", [])
    ]
    return [{**documents[-1], "entries": entries}]


def noise_multiplier_for(epsilon: float, delta: float, *, sampling_rate: float = 1.0, steps: int = 1) -> float:
    """The smallest Gaussian noise multiplier whose ``steps`` releases (sampled at ``sampling_rate``) stay within
    (``epsilon``, ``delta``) by the RDP accountant: to plan a job for a target epsilon."""
    if not epsilon > 0 or not 0 < delta < 1:
        raise ConfigError(f"a target needs epsilon > 0 and delta in (0, 1), got {epsilon}, {delta}")
    spend = lambda z: _epsilon([Spend("plan", noise_multiplier=z, sampling_rate=sampling_rate, steps=steps)], 0, delta)  # noqa: E731
    low, high = 1e-3, 1.0
    while spend(high) > epsilon:
        high *= 2
        if high > 1e4:
            raise ConfigError(f"no noise multiplier up to 1e4 reaches epsilon {epsilon} in {steps} steps")
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if spend(mid) > epsilon else (low, mid)
    return high
