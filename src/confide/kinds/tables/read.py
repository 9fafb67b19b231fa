"""Reading a clinical table (CSV) as text, and turning its cells into numbers, with errors that name the file,
the column, the site and the line.

A cell is missing when it is empty or one of :data:`MISSING_TOKENS` (case-insensitive, spaces ignored).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from confide.errors import DataError

MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "?"})


def is_missing(value: str) -> bool:
    return value.strip().lower() in MISSING_TOKENS


def as_number(value: str) -> float | None:
    """The cell as a finite float, or None when it is not one (missing cells are the caller's to check first)."""
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def match_level(value: str, levels: tuple[str, ...]) -> int | None:
    """The index of ``value`` among ``levels``: exact, else numerically equal ("1" matches "1.0")."""
    if value in levels:
        return levels.index(value)
    number = as_number(value)
    if number is not None:
        for k, level in enumerate(levels):
            if as_number(level) == number:
                return k
    return None


@dataclass(frozen=True)
class RawTable:
    """A CSV's header and rows as text; ``lines[i]`` is the file line where row ``i`` ends (the header is line 1)."""

    path: Path
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    lines: tuple[int, ...]

    def index(self, column: str) -> int:
        try:
            return self.header.index(column)
        except ValueError:
            raise DataError(f"table {self.path} lacks the columns {[column]}") from None

    def require(self, columns: list[str] | tuple[str, ...]) -> None:
        """Refuse a table without every one of ``columns``, naming all that are absent."""
        absent = sorted(set(columns) - set(self.header))
        if absent:
            raise DataError(f"table {self.path} lacks the columns {absent} (it has {list(self.header)})")

    def values(self, column: str) -> list[str]:
        at = self.index(column)
        return [row[at] for row in self.rows]

    def number(self, row: int, column: str, site: str | None = None) -> float:
        """Row ``row``'s cell in ``column`` as a finite number, or a DataError naming where it is."""
        value = self.rows[row][self.index(column)]
        number = as_number(value)
        if number is None:
            where = f", site {site}" if site is not None else ""
            raise DataError(
                f"table {self.path}{where}, line {self.lines[row]}: column {column!r} holds {value!r}, "
                "which is not a finite number"
            )
        return number


def read_table(path: Path) -> RawTable:
    """Every row of the CSV at ``path`` as text; a row with more or fewer fields than the header is refused, naming
    its line. Blank lines are skipped."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header: tuple[str, ...] | None = None
            rows: list[tuple[str, ...]] = []
            lines: list[int] = []
            for record in reader:
                if not record or all(not cell.strip() for cell in record):
                    continue
                if header is None:
                    header = tuple(cell.strip() for cell in record)
                    _check_header(path, header)
                    continue
                if len(record) != len(header):
                    raise DataError(
                        f"table {path}, line {reader.line_num}: {len(record)} fields where the header has {len(header)}"
                    )
                rows.append(tuple(cell.strip() for cell in record))
                lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(f"table {path} is not a valid CSV file: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"table {path} cannot be read: {exc}") from None
    if header is None or not rows:
        raise DataError(f"table {path} holds no rows")
    return RawTable(path, header, tuple(rows), tuple(lines))


def _check_header(path: Path, header: tuple[str, ...]) -> None:
    if any(not name for name in header):
        raise DataError(f"table {path}: the header has an unnamed column ({list(header)})")
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"table {path}: the header names column {name!r} twice")
        seen.add(name)
