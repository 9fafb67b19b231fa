"""One section of the report, in both of its forms: Markdown lines (``report.md``) and an HTML fragment
(``report.html``). The writer puts the sections in order; any module can add one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    markdown: tuple[str, ...]  # lines, a heading first where the section has one
    html: str  # the same content as HTML, escaped: text from the job, a site or a file never becomes markup

    @property
    def empty(self) -> bool:
        return not self.markdown and not self.html


NONE = Section((), "")
"""A section a job does not have (no privacy, no pictures)."""
