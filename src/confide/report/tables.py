"""The job's comparison table: every model's Dice on every site's held-out cases (terminal and Markdown)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.table import Table

Cross = Mapping[str, Mapping[str, Mapping[str, float]]]


def _site_names(cross: Cross) -> list[str]:
    first = next(iter(cross.values()))
    return [s for s in first if s != "all"]


def rows(cross: Cross) -> tuple[list[str], list[list[str]]]:
    """Header and rows: model, mean Dice per site, then WT/TC/ET/mean over all sites' test cases."""
    sites = _site_names(cross)
    header = ["model", *[f"{s} mean" for s in sites], "all WT", "all TC", "all ET", "all mean"]
    body = []
    for model, per_site in cross.items():
        every = per_site["all"]
        body.append(
            [
                model,
                *[f"{per_site[s]['dice_mean']:.3f}" for s in sites],
                *[f"{every[k]:.3f}" for k in ("dice_wt", "dice_tc", "dice_et", "dice_mean")],
            ]
        )
    return header, body


def rich_table(cross: Cross, title: str) -> Table:
    header, body = rows(cross)
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", style="bold" if name == "all mean" else None)
    best = max(float(r[-1]) for r in body)
    for row in body:
        style = "green" if float(row[-1]) == best else None
        table.add_row(*row, style=style)
    return table


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def region_rows(cross: Cross) -> tuple[list[str], list[list[str]]]:
    """Long form: one row per model and site, with every region's Dice."""
    header = ["model", "site", "cases", "WT", "TC", "ET", "mean"]
    body = []
    for model, per_site in cross.items():
        for site, m in per_site.items():
            body.append(
                [model, site, f"{int(m['cases'])}"]
                + [f"{m[k]:.3f}" for k in ("dice_wt", "dice_tc", "dice_et", "dice_mean")]
            )
    return header, body
