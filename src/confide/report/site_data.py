"""Each site's data as the report shows it: its training and test examples, what the task's reader said about them
(class balance, events, acquisition) and what was dropped, how much and why.

The numbers are the splits the job trained and tested on (``JobResult.sizes``); the balance and acquisition come
from the site's notes (:class:`confide.api.SiteData`), the dropped inputs from its skipped list. A reader that caps
its list ends it with one item counting the rest (``"28 more rows"``): that item counts as many inputs.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from confide.records import Skipped
from confide.report import html_page
from confide.report.section import Section
from confide.report.tables import markdown_table

if TYPE_CHECKING:
    from confide.run_result import JobResult

REASONS_SHOWN = 4
"""The most frequent reasons for dropping named in a site's row; the rest are counted."""
_MORE = re.compile(r"^(\d+) more\b")


def _weight(item: Skipped) -> int:
    """Inputs an item of a skipped list stands for: one, or the count of a capped list's last item."""
    more = _MORE.match(item.item)
    return int(more.group(1)) if more else 1


def dropped(skipped: Sequence[Skipped]) -> int:
    """How many inputs a site's reader could not use."""
    return sum(_weight(item) for item in skipped)


def reasons(skipped: Sequence[Skipped]) -> str:
    """Why a site's inputs were dropped, the most frequent reason first, each with its count."""
    counts: Counter[str] = Counter()
    for item in skipped:
        counts[item.reason] += _weight(item)
    ranked = counts.most_common()
    shown = [f"{reason} ({n})" for reason, n in ranked[:REASONS_SHOWN]]
    rest = len(ranked) - REASONS_SHOWN
    return "; ".join(shown) + (f"; {rest} other reason{'s' * (rest > 1)}" if rest > 0 else "") if shown else "-"


HEADER = ["site", "training examples", "test examples", "what the data holds", "dropped", "why"]


def site_rows(result: JobResult) -> tuple[list[str], list[list[str]]]:
    """One row per site: its splits' sizes, its notes, what was dropped and why."""
    body = []
    for site in result.sites:
        train, test = result.sizes[site.name]
        body.append(
            [
                site.name,
                str(train),
                str(test),
                "; ".join(site.notes) or "-",
                str(dropped(site.skipped)),
                reasons(site.skipped),
            ]
        )
    return list(HEADER), body


def section(result: JobResult) -> Section:
    """The section "Each site's data": the table, then every skipped input (a list in Markdown, one folded
    table per site in HTML)."""
    header, body = site_rows(result)
    intro = (
        "The splits every model was trained and tested on. What the data holds is each site's reader's own account "
        "(class balance or events, acquisition); dropped counts the inputs it could not use."
    )
    skipped: Mapping[str, Sequence[Skipped]] = {s.name: s.skipped for s in result.sites if s.skipped}
    md = ["## Each site's data", "", intro, "", markdown_table(header, body), ""]
    if skipped:
        md += ["Skipped inputs:", ""]
        md += [f"- {site}: {p.item}: {p.reason}" for site, items in skipped.items() for p in items]
        md += [""]
    folded = "".join(
        f"<details><summary>{html.escape(site)}: every skipped input ({dropped(items)})</summary>"
        f"{html_page.table(['input', 'why'], [[p.item, p.reason] for p in items], text_columns=(1,))}</details>"
        for site, items in skipped.items()
    )
    page = (
        f"<h2>Each site's data</h2><p>{html.escape(intro)}</p>"
        f"{html_page.table(header, body, text_columns=(3, 5))}{folded}"
    )
    return Section(tuple(md), page)
