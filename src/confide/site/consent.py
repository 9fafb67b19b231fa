"""A site operator's consent to a job, before the site reads any data or trains.

The server sends the job at Join. The site computes the job's digest: SHA-256 of a canonical JSON of the job as
received (keys sorted, no spaces, ASCII), so the same job gives the same digest run after run and any changed field
gives another. The site runs the job only when its operator approved it:

- ``confide site --approve``: this run, whatever job arrives (it is shown first); or
- the digest listed in the kit's ``approved_jobs.txt``, one per line, anything after ``#`` a comment::

      # jobs this hospital runs without --approve
      3c9d...e1f0  # heart-disease, approved by the data protection officer on 2025-03-14

- or, at a terminal, the operator's "y" when the site asks after showing the job (``confide site`` asks when its
  input is a terminal, ``--no-ask`` never does); a second question offers to list its digest for next time.

A job that changes (a round more, another filter, another model) has another digest and needs approval again. A job
not approved is declined: the site tells the server (a refusal with a reason, see deploy.run_site) and leaves
without reading its data. Each job received is kept as ``KIT/audit/jobs/DIGEST.json`` so that an auditor can see
exactly what a digest in the release log stood for, and what changed between two of them. In the spirit of
Fed-BioMed's approval of training plans.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confide.errors import ConfigError
from confide.sanitize import one_line

APPROVED_JOBS = "approved_jobs.txt"
"""The kit's list of approved job digests."""
JOBS_SEEN = Path("audit") / "jobs"
"""Where the kit keeps each job received, by digest."""
_DIGEST = re.compile(r"[0-9a-f]{64}")


def canonical_job(document: Mapping[str, Any]) -> bytes:
    """The job as received, in one canonical JSON form (sorted keys, no spaces, ASCII only)."""
    try:
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the job sent by the server is not plain JSON: {exc}") from None
    return text.encode("ascii")


def job_digest(document: Mapping[str, Any]) -> str:
    """SHA-256 of :func:`canonical_job`, in hexadecimal."""
    return hashlib.sha256(canonical_job(document)).hexdigest()


def read_approvals(kit: Path) -> dict[str, str]:
    """The digests the kit's ``approved_jobs.txt`` lists, each with its comment (empty: no file)."""
    path = kit / APPROVED_JOBS
    if not path.exists():
        return {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the list of approved jobs {path} cannot be read: {exc}") from None
    out: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        text, _, comment = line.partition("#")
        text = text.strip().lower().removeprefix("sha256:")
        if not text:
            continue
        if not _DIGEST.fullmatch(text):
            raise ConfigError(
                f"{path}, line {number}: expected a job digest (64 hexadecimal characters, then an optional "
                f"'# comment'), got {one_line(line, 80)!r}"
            )
        out[text] = one_line(comment.strip(), 200)
    return out


def approval_line(digest: str, job: str, when: datetime | None = None) -> str:
    """The line that approves a job in ``approved_jobs.txt``."""
    day = (when or datetime.now(UTC)).date().isoformat()
    return f"{digest}  # {job}, approved {day}"


@dataclass(frozen=True)
class Consent:
    """The operator's answer to one job: approved or not, and how."""

    job: str
    digest: str
    approved: bool
    how: str  # how it was approved, or why it was not
    kept: Path | None = None  # the job as received, kept in the kit

    @property
    def refusal(self) -> str:
        """What the server is told when the job is declined (no number from patients in it)."""
        return (
            f"declined job {self.job!r}: not approved by the site's operator (job digest {self.digest}); nothing "
            "was trained or sent"
        )


@dataclass(frozen=True)
class Approval:
    """How a site's operator approves jobs: ``approve`` (this run, any job) or the kit's list of digests.
    ``again``: the command that runs the site again with ``--approve`` (shown to an operator who declined)."""

    kit: Path
    approve: bool = False
    listed: Mapping[str, str] = field(default_factory=dict)
    again: str = ""
    prompt: Callable[[str], str] | None = None  # asks the operator a question at a terminal (``input``)

    @classmethod
    def of_kit(
        cls, kit: Path, *, approve: bool = False, again: str = "", prompt: Callable[[str], str] | None = None
    ) -> Approval:
        """The kit's approvals, read now: a malformed list stops the site before it dials the server."""
        return cls(kit, approve, read_approvals(kit), again, prompt)

    def decide(self, job: str, document: Mapping[str, Any]) -> Consent:
        digest = job_digest(document)
        if self.approve:
            return Consent(job, digest, True, "approved for this run by --approve")
        if digest in self.listed:
            note = f" ({self.listed[digest]})" if self.listed[digest] else ""
            return Consent(job, digest, True, f"approved: listed in {self.kit / APPROVED_JOBS}{note}")
        earlier = [d for d, comment in self.listed.items() if comment.split(",")[0].strip() == job]
        why = f"not in {self.kit / APPROVED_JOBS} and --approve not given"
        if earlier:
            why = (
                f"a job named {job!r} was approved before with digest {earlier[-1][:12]}..., but this one differs "
                f"(compare {self.kit / JOBS_SEEN}/{earlier[-1]}.json with {digest}.json)"
            )
        return Consent(job, digest, False, why)

    def ask(self, document: Mapping[str, Any], shown: list[str], say: Callable[[str], None]) -> Consent:
        """Show the job (``shown``: its description) and the verdict through ``say``; keep the job in the kit."""
        job = one_line(document.get("name", "job"), 100)
        consent = self.decide(job, document)
        kept = keep_job(self.kit, document, consent.digest)
        consent = Consent(consent.job, consent.digest, consent.approved, consent.how, kept)
        for line in shown:
            say(line)
        say(f"  job digest (SHA-256): {consent.digest}")
        if consent.approved:
            say(f"{consent.how}: this site takes part")
            if self.approve and consent.digest not in self.listed:
                say(f"to run this exact job later without --approve, add to {self.kit / APPROVED_JOBS}:")
                say(f"    {approval_line(consent.digest, job)}")
            return consent
        if self.prompt is not None:
            consent = self._asked(consent, say)
            if consent.approved:
                return consent
        say(f"NOT APPROVED: {consent.how}.")
        say("This site does not read its data, train or send an update: it tells the server it declines, and stops.")
        say("To approve this job, either run the site again with --approve:")
        say(f"    {self.again or 'confide site ... --approve'}")
        say(f"or add this line to {self.kit / APPROVED_JOBS} and start the site again:")
        say(f"    {approval_line(consent.digest, job)}")
        return consent

    def _asked(self, consent: Consent, say: Callable[[str], None]) -> Consent:
        """The operator's answer at the terminal (anything but y or yes, or no answer at all, declines)."""
        prompt = self.prompt or (lambda question: "")
        say(f"This job is not approved yet ({consent.how}).")
        if not _yes(prompt, "Run this job on this site's data now? [y/N] "):
            return Consent(consent.job, consent.digest, False, "the operator declined it at the prompt", consent.kept)
        approved = Consent(consent.job, consent.digest, True, "approved by the operator at the prompt", consent.kept)
        say(f"{approved.how}: this site takes part")
        if _yes(prompt, f"Also list its digest in {self.kit / APPROVED_JOBS}, to run it without asking? [y/N] "):
            line = add_approval(self.kit, consent.digest, consent.job)
            say(f"added to {self.kit / APPROVED_JOBS}: {line}")
        return approved


def _yes(prompt: Callable[[str], str], question: str) -> bool:
    try:
        answer = prompt(question)
    except (EOFError, KeyboardInterrupt):  # the input closed, or the operator stopped: no
        return False
    return answer.strip().lower() in {"y", "yes"}


def add_approval(kit: Path, digest: str, job: str) -> str:
    """Append the line that approves ``digest`` to the kit's ``approved_jobs.txt`` (made if missing); return it."""
    line = approval_line(digest, job)
    path = kit / APPROVED_JOBS
    try:
        before = path.read_text(encoding="utf-8") if path.exists() else ""
        with path.open("a", encoding="utf-8") as out:
            out.write(("" if not before or before.endswith("\n") else "\n") + line + "\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot add the approval to {path}: {exc}") from None
    return line


def keep_job(kit: Path, document: Mapping[str, Any], digest: str) -> Path:
    """Write the job as received to ``KIT/audit/jobs/DIGEST.json`` (once: the digest names its content)."""
    path = kit / JOBS_SEEN / f"{digest}.json"
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(document, sort_keys=True, indent=1, ensure_ascii=True) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"the job received cannot be kept in {path}: {exc}") from None
    return path
