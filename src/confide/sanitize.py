"""Text a site wrote, made safe to log and store: one line, printable, bounded.

A site's failure reason is its own word. Written as it came, a reason with newlines forges log lines, and one of
8 MB grew the server's checkpoint to 8 MB. Everything the server logs or stores from a site goes through here.
"""

from __future__ import annotations

SITE_TEXT_LIMIT = 300
"""Most characters of a site's text the server keeps (a longer one ends with an ellipsis)."""


def one_line(text: object, limit: int = SITE_TEXT_LIMIT) -> str:
    """``text`` on one line: control characters (newlines included) become spaces, runs of spaces fold, and
    anything past ``limit`` characters is cut and marked."""
    raw = str(text)[: limit * 4]  # never scan megabytes
    cleaned = "".join(ch if ch.isprintable() else " " for ch in raw)
    folded = " ".join(cleaned.split())
    return folded if len(folded) <= limit else folded[: limit - 1] + "…"
