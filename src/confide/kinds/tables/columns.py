"""What a table column is, read from its values: an identifier (never a feature) or a 0/1 indicator (kept 0/1).

- **Identifiers are refused, not warned about.** A column with about one value per row cannot generalise: one-hot
  encoded it gives the model a column per patient to memorise, and as a number it orders patients by when they were
  registered. A warning scrolls past in a job's output while the model it describes is reported as if sound, so
  :func:`identifier_problem` returns the reason the reader raises, telling the user to ``drop`` the column. Two
  cases, each over at least :data:`MIN_ROWS` values (fewer cannot tell an identifier from a small table):

  - a categorical column (text, or declared ``categorical`` without listed levels) with at least
    :data:`DISTINCT_SHARE` of its values distinct; listing its levels in ``categories`` says the user means it;
  - a numeric column named like an identifier (a word ``id``, ``uid``, ``mrn``, ``index``, ... in its name, as in
    ``patient_id`` or ``PatientID``) whose values are distinct whole numbers. A numeric column not named so is left
    alone, whatever its values: a lab value can be a distinct whole number in every row of a small table.
- **Indicators**: a numeric column whose values are all 0 or 1 (:func:`is_indicator`) is a yes/no answer; it is
  kept 0/1 instead of standardised, so its weight reads as the effect of "yes" and every site encodes it alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from confide.kinds.tables.read import as_number

MIN_ROWS = 20
DISTINCT_SHARE = 0.9
IDENTIFIER_WORDS = frozenset({"id", "ids", "uid", "uuid", "guid", "mrn", "index", "idx", "key", "unnamed"})
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def named_like_identifier(name: str) -> bool:
    """Whether one word of ``name`` (split at non-letters and at camel case) is an identifier's word."""
    return any(word.lower() in IDENTIFIER_WORDS for word in _WORDS.findall(name))


def identifier_problem(name: str, values: Sequence[str], *, categorical: bool) -> str | None:
    """Why column ``name`` with these (non-missing) values looks like an identifier, or None when it does not."""
    if len(values) < MIN_ROWS:
        return None
    distinct = len(set(values))
    if categorical:
        if distinct < DISTINCT_SHARE * len(values):
            return None
        return (
            f"column {name!r} looks like an identifier: {distinct} distinct values in {len(values)} rows, so "
            "one-hot encoding it would give the model a column per patient. Add it to the task's drop list "
            f"(drop: [{name}]); if it is a real categorical feature, list its levels under categories"
        )
    if not named_like_identifier(name) or distinct != len(values):
        return None
    numbers = [as_number(v) for v in values]
    if any(n is None or not n.is_integer() for n in numbers):
        return None
    return (
        f"column {name!r} looks like an identifier: its name says so and its {len(values)} values are distinct "
        f"whole numbers, which order patients, not describe them. Add it to the task's drop list (drop: [{name}])"
    )


def is_indicator(values: Sequence[str]) -> bool:
    """Whether every one of these (non-missing) values is the number 0 or 1 (and there is at least one)."""
    return bool(values) and all(as_number(v) in (0.0, 1.0) for v in values)
