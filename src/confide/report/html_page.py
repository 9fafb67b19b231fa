"""The report as one HTML file that opens anywhere, an e-mail attachment included: its style inline, no script, and
every image embedded as a ``data:`` URI (:func:`embed_images`, the last step over the whole page, so the pictures
that any section adds are embedded too)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:1em 0;display:block}"
    "td.text,th.text{text-align:left}details{margin:0.5em 0}summary{cursor:pointer}"
    "pre{background:#f6f6f6;padding:0.8em;overflow-x:auto;font-size:90%}.note{color:#555}"
)

PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff"
_IMG = re.compile(r"""<img\b[^>]*?\bsrc\s*=\s*(["'])(?P<src>[^"']*)\1[^>]*>""", re.IGNORECASE)


def table(header: Sequence[str], body: Sequence[Sequence[str]], text_columns: Sequence[int] = ()) -> str:
    """An HTML table of text cells (every cell escaped); ``text_columns``: columns aligned left (words, not
    numbers)."""
    left = set(text_columns)
    head = "".join(f"<th{' class=text' if i in left else ''}>{html.escape(h)}</th>" for i, h in enumerate(header))
    rows = "".join(
        "<tr>"
        + "".join(f"<td{' class=text' if i in left else ''}>{html.escape(c)}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in body
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def page(title: str, body: str) -> str:
    """A whole HTML document around ``body`` (already HTML), with the report's inline style."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def _data_uri(path: Path) -> str | None:
    """``path`` as a ``data:`` URI when it holds a PNG or a JPEG, else None."""
    content = path.read_bytes()
    kind = "png" if content.startswith(PNG) else "jpeg" if content.startswith(JPEG) else None
    if kind is None:
        return None
    return f"data:image/{kind};base64,{base64.b64encode(content).decode('ascii')}"


def embed_images(document: str, folder: Path) -> str:
    """``document`` with every ``<img src="NAME">`` naming a PNG or JPEG file of ``folder`` (or below it) embedded
    as a ``data:`` URI. An image that cannot be embedded (missing, outside the folder, another format, a remote
    address) is replaced by a line saying so, never left as a link the reader's mail client would follow."""
    root = folder.resolve()

    def embed(match: re.Match[str]) -> str:
        src = html.unescape(match.group("src"))
        if src.startswith("data:image/"):
            return match.group(0)
        target = (root / src).resolve()
        uri = None
        if "://" not in src and not src.startswith("//") and target.is_relative_to(root) and target.is_file():
            uri = _data_uri(target)
        if uri is None:
            why = "not a PNG or JPEG file of the report folder"
            return f"<p class=note>[image {html.escape(src)} could not be embedded: {why}]</p>"
        start, end = match.span("src")
        whole = match.group(0)
        offset = match.start()
        return whole[: start - offset] + uri + whole[end - offset :]

    return _IMG.sub(embed, document)
