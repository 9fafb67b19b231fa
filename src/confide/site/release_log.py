"""What left a deployed site, answer by answer: the local log its operator hands to an auditor.

``KIT/audit/releases.jsonl`` holds one JSON line per answer the site sent: the time (UTC), the site, the job and
its digest (:mod:`confide.site.consent`), the round, the kind of message, its size in bytes, the filters that ran
with what each recorded, the privacy mechanisms charged this round (from the site's ledger) and epsilon (this
round, total, budget and what is left of it). Never the update itself, nor any array: an auditor can read the log
without reading anything about a patient beyond what was sent. Each line is written, flushed and synced before the
answer is handed to the transport, so a crash loses nothing already written; a line that cannot be written stops
the answer (nothing leaves unrecorded).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from confide.errors import ConfideError, ConfigError
from confide.privacy.ledger import Ledger
from confide.records import Control, EvalRes, Failure, Record, SparseArrays, TrainRes
from confide.sanitize import one_line

RELEASES = Path("audit") / "releases.jsonl"
"""Where a kit keeps its release log."""


class Mechanism(BaseModel):
    """A filter of the chain, or a privacy mechanism the ledger charged, with what it recorded."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    params: dict[str, Any]
    epsilon: float | None = None


class Release(BaseModel):
    """One answer that left the site (one line of the release log)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    time: str
    site: str
    job: str
    job_digest: str
    round: int
    kind: str  # update, sparse update, evaluation, refusal, error, or a secure-aggregation topic
    bytes: int
    examples: int | None = None
    metrics: dict[str, float] = {}
    reason: str | None = None
    filters: list[Mechanism] = []
    charged: list[Mechanism] = []
    epsilon_round: float | None = None  # None under a ledger: no finite bound
    epsilon_total: float | None = None
    delta: float | None = None
    budget: float | None = None
    budget_left: float | None = None


def _kind(record: Record) -> str:
    if isinstance(record, TrainRes):
        return "sparse update" if isinstance(record.update, SparseArrays) else "update"
    if isinstance(record, EvalRes):
        return "evaluation"
    if isinstance(record, Failure):
        return "refusal" if record.kind == "refused" else "error"
    if isinstance(record, Control):
        return record.topic
    return type(record).__name__


def _carries_update(record: Record) -> bool:
    return isinstance(record, TrainRes) or (isinstance(record, Control) and len(record.arrays) > 0)


def _filters(described: str) -> list[Mechanism]:
    """The chain's own record of its filters (FilterChain.describe: JSON). A filter's epsilon is kept only where
    it states one (SVT's per round); a Gaussian's cost is the accountant's, in the ledger's charges."""
    try:
        out = []
        for item in json.loads(described or "[]"):
            params = dict(item["params"])
            if item.get("noise_multiplier"):
                params["noise_multiplier"] = item["noise_multiplier"]
            epsilon = item.get("epsilon") or None
            out.append(Mechanism(name=str(item["name"]), params=params, epsilon=epsilon))
        return out
    except (ValueError, KeyError, TypeError, ValidationError):
        return [Mechanism(name="unreadable filter record", params={"text": one_line(described, 200)})]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def release_of(
    record: Record,
    size: int,
    *,
    site: str,
    job: str,
    digest: str,
    filters: str,
    ledger: Ledger | None,
    charged_before: int,
    when: datetime | None = None,
) -> Release:
    """The release-log line for ``record`` (``size`` bytes as encoded). ``filters``: the chain's description (used
    for answers that carry an update); ``charged_before``: how many entries the ledger held before the answer."""
    metrics: dict[str, float] = {}
    examples = None
    if isinstance(record, TrainRes | EvalRes):
        metrics = {one_line(k, 60): float(v) for k, v in record.metrics.items() if math.isfinite(float(v))}
        examples = record.num_examples
    entries = ledger.entries[charged_before:] if ledger is not None else []
    total = (ledger.entries[-1].epsilon_total if ledger.entries else 0.0) if ledger is not None else None
    budget = ledger.budget if ledger is not None else None
    return Release(
        time=(when or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        site=site,
        job=job,
        job_digest=digest,
        round=record.round,
        kind=_kind(record),
        bytes=int(size),
        examples=examples,
        metrics=metrics,
        reason=one_line(record.reason, 300) if isinstance(record, Failure) else None,
        filters=_filters(filters) if _carries_update(record) else [],
        charged=[Mechanism(name=e.mechanism, params=e.params, epsilon=_finite(e.epsilon_round)) for e in entries],
        epsilon_round=_finite(sum(e.epsilon_round for e in entries)) if ledger is not None else None,
        epsilon_total=_finite(total) if total is not None else None,
        delta=ledger.delta if ledger is not None else None,
        budget=budget,
        budget_left=_finite(budget - total) if budget is not None and total is not None else None,
    )


def release_text(release: Release) -> str:
    """The line the site prints for a release."""
    filters = ", ".join(f.name for f in release.filters) or "none"
    text = f"round {release.round}: sent {release.kind}, {release.bytes:,} bytes; filters: {filters}"
    if release.reason:
        text += f"; reason: {release.reason}"
    if release.epsilon_total is None and release.delta is None:
        return text + "; no privacy ledger (nothing spent)"
    spent = "unbounded" if release.epsilon_round is None else f"{release.epsilon_round:.4g}"
    total = "unbounded" if release.epsilon_total is None else f"{release.epsilon_total:.4g}"
    text += f"; epsilon this round {spent}, total {total} at delta {release.delta:g}"
    if release.budget is not None:
        left = "?" if release.budget_left is None else f"{release.budget_left:.4g}"
        text += f", budget {release.budget:g} ({left} left)"
    return text


class ReleaseLog:
    """Appends one line per answer of one job to a site's release log, and tells the operator (``say``)."""

    def __init__(
        self, path: Path, *, site: str, job: str, digest: str, say: Callable[[str], None] | None = None
    ) -> None:
        self.path = path
        self.site = site
        self.job = job
        self.digest = digest
        self.say = say

    @classmethod
    def in_kit(
        cls, kit: Path, *, site: str, job: str, digest: str, say: Callable[[str], None] | None = None
    ) -> ReleaseLog:
        return cls(kit / RELEASES, site=site, job=job, digest=digest, say=say)

    def record(self, record: Record, size: int, *, filters: str, ledger: Ledger | None, charged_before: int) -> Release:
        """Write the line for ``record`` (flushed and synced) before it leaves; a line that cannot be written
        raises, and the answer is not sent."""
        release = release_of(
            record,
            size,
            site=self.site,
            job=self.job,
            digest=self.digest,
            filters=filters,
            ledger=ledger,
            charged_before=charged_before,
        )
        line = release.model_dump_json() + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as out:
                out.write(line)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise ConfideError(
                f"the release log {self.path} cannot be written ({exc.strerror or exc}): the answer to round "
                f"{record.round} is not sent unrecorded"
            ) from None
        if self.say is not None:
            self.say(release_text(release))
        return release


def read_releases(path: Path) -> list[Release]:
    """Every line of a release log. A last line cut short (a crash while writing it) is left out; any other
    malformed line is an error naming its number."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the release log {path} cannot be read: {exc}") from None
    lines = text.split("\n")
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(Release.model_validate_json(line))
        except ValidationError as exc:
            if number == len(lines):  # no newline after it: cut short while written
                break
            raise ConfigError(f"{path}, line {number}: not a release record: {one_line(exc, 200)}") from None
    return out


@dataclass(frozen=True)
class JobReleases:
    """What one job's answers released, summed."""

    job: str
    digest: str
    answers: int
    kinds: dict[str, int]
    rounds: tuple[int, int]
    bytes: int
    first: str
    last: str
    epsilon_total: float | None
    budget_left: float | None


def summarize(releases: Iterable[Release]) -> list[JobReleases]:
    """One summary per job digest, in the order jobs first appear."""
    groups: dict[tuple[str, str], list[Release]] = {}
    for release in releases:
        groups.setdefault((release.job, release.job_digest), []).append(release)
    out = []
    for (job, digest), items in groups.items():
        kinds: dict[str, int] = {}
        for item in items:
            kinds[item.kind] = kinds.get(item.kind, 0) + 1
        spent = [i for i in items if i.epsilon_total is not None]
        out.append(
            JobReleases(
                job=job,
                digest=digest,
                answers=len(items),
                kinds=kinds,
                rounds=(min(i.round for i in items), max(i.round for i in items)),
                bytes=sum(i.bytes for i in items),
                first=items[0].time,
                last=items[-1].time,
                epsilon_total=spent[-1].epsilon_total if spent else None,
                budget_left=spent[-1].budget_left if spent else None,
            )
        )
    return out


def release_rows(jobs: Iterable[JobReleases]) -> tuple[list[str], list[list[str]]]:
    """The summaries as a table: a header and one row of text per job (the digest's first 12 characters)."""
    header = ["job", "digest", "answers", "rounds", "bytes", "epsilon total", "budget left", "first (UTC)", "last"]
    rows = []
    for job in jobs:
        kinds = ", ".join(f"{count} {kind}" for kind, count in job.kinds.items())
        rows.append(
            [
                job.job,
                job.digest[:12],
                f"{job.answers} ({kinds})",
                f"{job.rounds[0]}-{job.rounds[1]}",
                f"{job.bytes:,}",
                "-" if job.epsilon_total is None else f"{job.epsilon_total:.4g}",
                "-" if job.budget_left is None else f"{job.budget_left:.4g}",
                job.first[:19].replace("T", " "),
                job.last[:19].replace("T", " "),
            ]
        )
    return header, rows
