"""The job's tables: every model on every site's held-out split, each site's gain, the privacy ledger
(terminal and Markdown).

A metric that is undefined at a site (NaN: an AUC whose test split holds one class, a C-index without a comparable
pair) is shown as ``n/a`` with the reason where the metric has only one (:data:`UNDEFINED`), never as ``nan``; a mean
over the sites that leaves some out says how many it covers, as in ``0.712 (3 of 4 sites)``.

Each test split's size ``n`` stands beside its scores; a score measured on fewer than :data:`SMALL_TEST` cases is
marked :data:`UNCERTAIN` (its bootstrap interval, in the report's predictions section and ``metrics.json``, is wide).
Terminal tables hold every name as plain :class:`~rich.text.Text`: a site called ``local:Hungary:`` is not drawn as
a flag, nor ``[bold]`` read as markup.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

Cross = Mapping[str, Mapping[str, Mapping[str, float]]]


def site_names(cross: Cross) -> list[str]:
    first = next(iter(cross.values()))
    return [s for s in first if s != "all"]


# why a metric can be undefined at a site, where there is one reason only
UNDEFINED = {"auc": "one class", "c_index": "no comparable pair"}


def _defined(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _f(value: float | None) -> str:
    """A number that may be absent (not computed): ``-``."""
    return f"{value:.3f}" if _defined(value) else "-"


def score_text(value: float | None, metric: str = "") -> str:
    """A site's score, or ``n/a`` (with the reason, where :data:`UNDEFINED` knows it) when it is undefined."""
    if value is not None and math.isfinite(value):
        return f"{value:.3f}"
    why = UNDEFINED.get(metric)
    return f"n/a ({why})" if why else "n/a"


def mean_text(every: Mapping[str, float], metric: str, sites: int) -> str:
    """The mean over the sites, saying how many of the ``sites`` it covers when not all of them."""
    value = every.get(metric)
    if value is None or not math.isfinite(value):
        return "n/a (no site)" if sites else "n/a"
    covered = every.get(f"{metric}_sites")
    if covered is None or int(covered) >= sites:
        return f"{value:.3f}"
    return f"{value:.3f} ({int(covered)} of {sites} sites)"


SMALL_TEST = 30
"""A test split with fewer cases than this gives an uncertain score: it is marked :data:`UNCERTAIN`."""
UNCERTAIN = "\u2020"  # a dagger: beside a score, "measured on a small test split"


def split_sizes(cross: Cross) -> dict[str, int]:
    """Each site's test split size ``n`` (the same for every model: the first model's count of ``cases``)."""
    first = next(iter(cross.values()))
    return {site: int(first[site].get("cases", 0)) for site in site_names(cross)}


def small_splits(cross: Cross) -> dict[str, int]:
    """The sites whose test split holds fewer than :data:`SMALL_TEST` cases, with their ``n``."""
    return {site: n for site, n in split_sizes(cross).items() if n < SMALL_TEST}


def marked(text: str, n: int) -> str:
    """A score's text, marked uncertain when its test split is small (``n/a`` and ``-`` are left as they are)."""
    number = text[:1].isdigit() or (text[:1] in "+-" and text[1:2].isdigit())
    return f"{text}{UNCERTAIN}" if number and n < SMALL_TEST else text


def uncertainty_note(cross: Cross) -> str:
    """One line under a table that holds marked scores (empty when no test split is small)."""
    small = small_splits(cross)
    if not small:
        return ""
    shown = ", ".join(f"{site} (n={n})" for site, n in small.items())
    return (
        f"{UNCERTAIN} test split under {SMALL_TEST} cases: {shown}. A score on so few cases is uncertain (each case "
        "weighs 1/n of a mean over the cases): read it with its bootstrap confidence interval (the report's "
        "predictions section, metrics.json), not as a point value."
    )


def rows(cross: Cross, metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows: model, ``metric`` on each site's test split (its size ``n`` in the header, a score on a
    small split marked), then its mean over the sites and spread."""
    sizes = split_sizes(cross)
    header = ["model", *[f"{s} (n={n})" for s, n in sizes.items()], "mean over sites", "sd"]
    body = []
    for model, per_site in cross.items():
        every = per_site["all"]
        body.append(
            [
                model,
                *[marked(score_text(per_site[s][metric], metric), n) for s, n in sizes.items()],
                mean_text(every, metric, len(sizes)),
                _f(every.get(f"{metric}_sd")),
            ]
        )
    return header, body


def text_table(header: Sequence[str], body: Sequence[Sequence[str]], title: str, **styles: str | None) -> Table:
    """A terminal table of plain text: no name in it is read as rich markup or an emoji code. ``styles``: a column
    (by header) to draw in a style."""
    table = Table(title=Text(title), title_justify="left")
    for i, name in enumerate(header):
        table.add_column(Text(name), justify="left" if i == 0 else "right", style=styles.get(name))
    for row in body:
        table.add_row(*[Text(cell) for cell in row])
    return table


def _caption(cross: Cross) -> Text | None:
    note = uncertainty_note(cross)
    return Text(note) if note else None


def rich_table(cross: Cross, metric: str, title: str) -> Table:
    """The cross-site table for a terminal: each site's ``n`` under its name, the best mean in green, the small
    splits explained under the table."""
    header, body = rows(cross, metric)
    table = Table(title=Text(title), title_justify="left", caption=_caption(cross), caption_justify="left")
    for i, name in enumerate(header):
        table.add_column(
            Text(name.replace(" (n=", "\n(n=")),
            justify="left" if i == 0 else "right",
            style="bold" if name == "mean over sites" else None,
        )
    means = [per_site["all"].get(metric, math.nan) for per_site in cross.values()]
    best = max((m for m in means if _defined(m)), default=math.nan)
    for row, mean in zip(body, means, strict=True):
        table.add_row(*[Text(cell) for cell in row], style="green" if _defined(mean) and mean == best else None)
    return table


def _cell(text: str) -> str:
    """A Markdown table cell: a ``|`` or a line break in a name would end the cell or the row."""
    return " ".join(text.split("\n")).replace("|", "\\|")


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in body]
    return "\n".join(lines)


def metric_rows(cross: Cross, keys: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Long form: one row per model and site, with every metric."""
    header = ["model", "site", "test n", *keys]
    body = []
    for model, per_site in cross.items():
        sites = len(per_site) - 1
        for site, m in per_site.items():
            n = int(m["cases"])
            if site == "all":
                cells = [mean_text(m, k, sites) for k in keys]
            else:
                cells = [marked(score_text(m.get(k), k), n) for k in keys]
            body.append([model, site, f"{n}", *cells])
    return header, body


def gains(cross: Cross, metric: str, federated: str) -> dict[str, dict[str, float]]:
    """For each site, on its own test split: its local-only model, the federated model, its fine-tuned model and
    the pooled one (where trained), and the gains of the federated and fine-tuned models over local-only."""
    out: dict[str, dict[str, float]] = {}
    for site in site_names(cross):
        row = {"federated": cross[federated][site][metric]}
        if f"local:{site}" in cross:
            row["local"] = cross[f"local:{site}"][site][metric]
        if f"finetuned:{site}" in cross:
            row["finetuned"] = cross[f"finetuned:{site}"][site][metric]
        if "pooled" in cross:
            row["pooled"] = cross["pooled"][site][metric]
        if "local" in row:
            row["gain federated"] = row["federated"] - row["local"]
            if "finetuned" in row:
                row["gain fine-tuned"] = row["finetuned"] - row["local"]
        out[site] = row
    return out


GAIN_COLUMNS = ("local", "federated", "finetuned", "pooled", "gain federated", "gain fine-tuned")


def gain_rows(cross: Cross, metric: str, federated: str) -> tuple[list[str], list[list[str]]]:
    table = gains(cross, metric, federated)
    sizes = split_sizes(cross)
    present = [c for c in GAIN_COLUMNS if any(c in row for row in table.values())]
    header = ["site (own test split)", "n", *present]
    body = []
    for site, row in table.items():
        cells = []
        for c in present:
            value = row.get(c)
            if value is None:
                cells.append("-")  # not trained (no local-only model, no fine-tuning)
            elif c.startswith("gain") and math.isfinite(value):
                cells.append(f"{value:+.3f}")
            else:
                cells.append(score_text(value, "" if c.startswith("gain") else metric))
        body.append([site, str(sizes[site]), *[marked(c, sizes[site]) for c in cells]])
    return header, body


def rich_gains(cross: Cross, metric: str, federated: str, title: str) -> Table:
    header, body = gain_rows(cross, metric, federated)
    table = Table(title=Text(title), title_justify="left", caption=_caption(cross), caption_justify="left")
    for i, name in enumerate(header):
        table.add_column(Text(name), justify="left" if i == 0 else "right")
    for row in body:
        table.add_row(Text(row[0]), *[_coloured(c) for c in row[1:]])
    return table


def _coloured(cell: str) -> Text:
    if cell.startswith("+"):
        return Text(cell, style="green")
    if cell.startswith("-") and cell != "-":
        return Text(cell, style="red")
    return Text(cell)


def ledger_rows(ledgers: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The privacy ledgers of a run: one row per site, round and mechanism, with the cumulative (epsilon, delta)."""
    jobs = len({entry.get("job", "") for ledger in ledgers for entry in ledger.get("entries", [])}) > 1
    header = ["site", "round", "mechanism", "parameters", "epsilon this round", "epsilon total", "delta", "budget"]
    header = ["job", *header] if jobs else header
    body = []
    for ledger in ledgers:
        budget = ledger.get("budget")
        for entry in ledger.get("entries", []):
            params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(entry["params"].items()))
            body.append(
                ([str(entry.get("job", ""))] if jobs else [])
                + [
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


def epsilon_by_round(ledgers: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, float]]:
    """Each site's cumulative epsilon at the end of each round it spent in (site -> round -> epsilon). A kit's
    ledger spans several jobs: their rounds are numbered on, one after the other."""
    out: dict[str, dict[int, float]] = {}
    for ledger in ledgers:
        per_round = out.setdefault(str(ledger["site"]), {})
        totals = _round_totals(ledger)
        several = len({job for (job, _, _), _ in totals}) > 1
        for (_, rnd, index), total in totals:
            per_round[index if several else rnd] = total
    return out


def _round_totals(ledger: Mapping[str, Any]) -> list[tuple[tuple[str, int, int], float]]:
    """((job, round, running index), cumulative epsilon) at the end of each (job, round) of a ledger."""
    totals: dict[tuple[str, int], float] = {}
    for entry in ledger.get("entries", []):
        totals[(str(entry.get("job", "")), int(entry["round"]))] = float(entry["epsilon_total"])
    return [((job, rnd, i + 1), total) for i, ((job, rnd), total) in enumerate(totals.items())]


def ledger_matrix(ledgers: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Epsilon spent so far by every site after every round: one row per round, one column per site."""
    sites = sorted(str(ledger["site"]) for ledger in ledgers)
    cells: dict[tuple[str, int], dict[str, float]] = {}
    for ledger in ledgers:
        for (job, rnd, _), total in _round_totals(ledger):
            cells.setdefault((job, rnd), {})[str(ledger["site"])] = total
    several = len({job for job, _ in cells}) > 1
    header = ["job", "round", *sites] if several else ["round", *sites]
    body = []
    for (job, rnd), per_site in cells.items():
        row = [f"{per_site[s]:.3g}" if s in per_site else "-" for s in sites]
        body.append([job, str(rnd), *row] if several else [str(rnd), *row])
    by_site = {str(ledger["site"]): ledger.get("budget") for ledger in ledgers}
    if any(b is not None for b in by_site.values()):
        budgets = ["-" if by_site.get(s) is None else f"{by_site[s]:g}" for s in sites]
        body.append(["budget", "", *budgets] if several else ["budget", *budgets])
    return header, body


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
