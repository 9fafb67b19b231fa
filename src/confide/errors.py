"""The exception tree of Confide.

Every error Confide raises on purpose derives from :class:`ConfideError`, so callers
can catch one type at a boundary (the CLI, a site runner, the server loop) and
report a clear message instead of a stack trace::

    ConfideError
    ├── ConfigError          a job file or a setting is wrong (names the field)
    ├── DataError            input data cannot be used
    │   └── CaseError        one imaging case is incomplete, unreadable or inconsistent
    ├── PayloadError         bytes on the wire cannot be decoded
    │   └── PayloadTooLarge  a payload exceeds the configured size limit
    ├── UpdateRejected       a decoded update does not fit the global model
    ├── TaskError            a task failed while training or evaluating
    ├── PrivacyError         a privacy filter failed or refused: the update is blocked
    ├── TransportError       a message could not be delivered
    └── RoundFailed          a round could not complete (for example, quorum not met)
"""

from __future__ import annotations


class ConfideError(Exception):
    """Base class of every error Confide raises on purpose."""


class ConfigError(ConfideError):
    """A job file, a command-line option or a setting is invalid."""


class DataError(ConfideError):
    """Input data cannot be used."""


class CaseError(DataError):
    """One imaging case is incomplete, unreadable or inconsistent.

    ``case_id`` names the case so that a reader can skip it and report it.
    """

    def __init__(self, case_id: str, reason: str) -> None:
        super().__init__(f"case {case_id}: {reason}")
        self.case_id = case_id
        self.reason = reason


class PayloadError(ConfideError):
    """Bytes received on the wire cannot be decoded into a record."""


class PayloadTooLarge(PayloadError):
    """A payload is larger than the configured limit."""


class UpdateRejected(ConfideError):
    """An update does not fit the global model (names, shapes, dtypes, values)."""

    def __init__(self, site: str, reason: str) -> None:
        super().__init__(f"update from site {site!r} rejected: {reason}")
        self.site = site
        self.reason = reason


class TaskError(ConfideError):
    """A task failed while training or evaluating."""


class PrivacyError(ConfideError):
    """A privacy filter failed or refused; the update it guarded is blocked."""


class TransportError(ConfideError):
    """A message could not be delivered."""


class RoundFailed(ConfideError):
    """A round could not complete."""


class BudgetSpent(RoundFailed):
    """A round missed its quorum because sites' privacy budgets are spent: training stops, the model is kept."""


BUDGET_REFUSAL = "privacy budget:"
"""How a site's refusal of a round over its budget begins; the server stops training on it (only when the round
missed its quorum anyway, so a site cannot stop a federation that could go on without it)."""


class JobFailed(ConfideError):
    """The server ended the job as failed (a site hears why and exits non-zero)."""
