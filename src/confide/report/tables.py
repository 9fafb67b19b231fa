"""The job's comparison table: every model's Dice on every site's held-out cases (terminal and Markdown)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


def ledger_rows(ledgers: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The privacy ledgers of a run: one row per site, round and mechanism, with the cumulative (epsilon, delta)."""
    header = ["site", "round", "mechanism", "parameters", "epsilon this round", "epsilon total", "delta", "budget"]
    body = []
    for ledger in ledgers:
        budget = ledger.get("budget")
        for entry in ledger.get("entries", []):
            params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(entry["params"].items()))
            body.append(
                [
                    str(ledger["site"]),
                    str(entry["round"]),
                    str(entry["mechanism"]),
                    params,
                    f"{entry['epsilon_round']:.4g}",
                    f"{entry['epsilon_total']:.4g}",
                    f"{entry['delta']:g}",
                    "-" if budget is None else f"{budget:g}",
                ]
            )
    return header, body


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
