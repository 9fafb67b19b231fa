"""The report's result sections: the overview of the job, every model on every site's test split (with the
headline verdict), what federation gained each site, the figures and every metric per site. Each test split's size
stands beside its scores, and a score on a small split is marked (:mod:`confide.report.tables`)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from confide.report import html_page
from confide.report.section import Section
from confide.report.tables import (
    SMALL_TEST,
    UNCERTAIN,
    gain_rows,
    gains,
    markdown_table,
    mean_text,
    metric_rows,
    rows,
    site_names,
    uncertainty_note,
)

if TYPE_CHECKING:
    from confide.run_result import JobResult

FIGURES = (
    ("heatmap", "cross-site heatmap"),
    ("gains", "gains per site"),
    ("curves", "learning curves"),
    ("per_site", "per site"),
)
"""The result figures, in the report's order: (key in the writer's files, caption)."""


def verdict(result: JobResult) -> list[str]:
    """The headline lines; a model or site whose metric is undefined is left out of each comparison, and a mean
    that does not cover every site says how many it covers."""
    fed, metric = result.federated, result.metric
    n_sites = len(site_names(result.cross))
    every = {m: per["all"][metric] for m, per in result.cross.items() if math.isfinite(per["all"][metric])}
    label = metric.replace("_", " ")
    headline = mean_text(result.cross[fed]["all"], metric, n_sites)
    lines = [f"- Federated ({fed}) {label}, mean over the sites' test splits: **{headline}**"]
    locals_ = {m: v for m, v in every.items() if m.startswith("local:")}
    if locals_ and fed in every:
        best_local = max(locals_, key=lambda m: locals_[m])
        beaten = sum(every[fed] > v for v in locals_.values())
        lines.append(
            f"- Above {beaten} of {len(locals_)} local-only models; "
            f"best local-only: {best_local} {mean_text(result.cross[best_local]['all'], metric, n_sites)}"
        )
    if "pooled" in every and fed in every:
        pooled = mean_text(result.cross["pooled"]["all"], metric, n_sites)
        lines.append(f"- Pooled: {pooled} (federated - pooled = {every[fed] - every['pooled']:+.3f})")
    table = gains(result.cross, metric, fed)
    gained = [row["gain federated"] for row in table.values() if math.isfinite(row.get("gain federated", math.nan))]
    if gained:
        better = sum(g > 0 for g in gained)
        lines.append(
            f"- On its own test split, federation beat local-only training at {better} of {len(gained)} sites "
            f"(mean gain {sum(gained) / len(gained):+.3f})"
        )
    tuned = [row["finetuned"] - row["federated"] for row in table.values() if "finetuned" in row]
    tuned = [t for t in tuned if math.isfinite(t)]
    if tuned:
        lines.append(f"- Fine-tuning at each site changed its own score by {sum(tuned) / len(tuned):+.3f} on average")
    return lines


def finetune_steps(result: JobResult) -> int:
    steps = result.job.finetune.steps
    return result.job.federation.local_steps if steps is None else steps


def overview(result: JobResult, per_site_plots: int | None) -> Section:
    """Title, the task, the federation's settings, a note where per-site plots were left out (``per_site_plots``:
    the limit passed), and any early stop."""
    fed = result.job.federation
    budget = "Every model had the same budget of local optimisation steps" + (
        f"; fine-tuned models add {finetune_steps(result)} steps at their own site."
        if any(run.kind == "finetuned" for run in result.runs)
        else "."
    )
    setting = (
        f"{result.description}. {len(result.sites)} sites, {fed.rounds} rounds of {fed.local_steps} local steps, "
        f"strategy {fed.strategy}."
    )
    left_out = (
        [f"Per-site plots are left out above {per_site_plots} sites; the tables hold every site."]
        if per_site_plots is not None
        else []
    )
    stopped = [(run.name, run.stopped) for run in result.runs if run.stopped]
    md = [f"# Confide report: {result.job.name}", "", setting, budget, *left_out, ""]
    md += [line for name, why in stopped for line in (f"**Training stopped early ({name}):** {why}", "")]
    page = (
        f"<h1>Confide report: {html.escape(result.job.name)}</h1><p>{html.escape(setting)} {html.escape(budget)}</p>"
        + "".join(f"<p>{html.escape(line)}</p>" for line in left_out)
        + "".join(f"<p><b>Training stopped early ({html.escape(n)}):</b> {html.escape(w)}</p>" for n, w in stopped)
    )
    return Section(tuple(md), page)


def _note(result: JobResult, *, again: bool = False) -> tuple[list[str], str]:
    """The note on small test splits, in Markdown and HTML (``again``: its short form, after the first table)."""
    note = uncertainty_note(result.cross)
    if note and again:
        note = (
            f"{UNCERTAIN} test split under {SMALL_TEST} cases: an uncertain score (see the note under the first table)."
        )
    return ([note, ""] if note else []), (f"<p class=note>{html.escape(note)}</p>" if note else "")


def cross_site(result: JobResult) -> Section:
    """Every model on every site's held-out test split, the sizes in the header, and the verdict."""
    label = result.metric.replace("_", " ")
    header, body = rows(result.cross, result.metric)
    note_md, note_html = _note(result)
    lines = verdict(result)
    md = [f"## {label} on every site's held-out test split", "", markdown_table(header, body), "", *note_md]
    md += [*lines, ""]
    items = "".join(f"<li>{html.escape(line[2:]).replace('**', '')}</li>" for line in lines)
    page = (
        f"<h2>{html.escape(label)} on every site's held-out test split</h2>"
        f"{html_page.table(header, body)}{note_html}<ul>{items}</ul>"
    )
    return Section(tuple(md), page)


def gained(result: JobResult) -> Section:
    """Each site's own test split: its local-only model, the federated one, fine-tuned, pooled, and the gains."""
    label = result.metric.replace("_", " ")
    header, body = gain_rows(result.cross, result.metric, result.federated)
    intro = (
        f"Each site's own test split (n cases), {label}: its local-only model, the federated model as the site uses "
        "it, the federated model fine-tuned at the site, and pooled training."
    )
    note_md, note_html = _note(result, again=True)
    md = ["## What federation gained each site", "", intro, "", markdown_table(header, body), "", *note_md]
    page = (
        f"<h2>What federation gained each site</h2><p>{html.escape(intro)}</p>"
        f"{html_page.table(header, body)}{note_html}"
    )
    return Section(tuple(md), page)


def figures(files: Mapping[str, Path]) -> Section:
    """The result figures the writer drew, in order."""
    drawn = [(files[key].name, caption) for key, caption in FIGURES if key in files]
    md = [line for name, caption in drawn for line in (f"![{caption}]({name})", "")]
    page = "".join(f'<img src="{html.escape(name)}" alt="{html.escape(caption)}">' for name, caption in drawn)
    return Section(tuple(md), page)


def every_metric(result: JobResult, keys: Sequence[str] | None = None) -> Section:
    """Long form: one row per model and site, every metric, the test split's size beside them."""
    header, body = metric_rows(result.cross, keys or result.metric_keys)
    note_md, note_html = _note(result, again=True)
    md = ["## Every metric, per site", "", markdown_table(header, body), "", *note_md]
    page = f"<h2>Every metric, per site</h2>{html_page.table(header, body, text_columns=(1,))}{note_html}"
    return Section(tuple(md), page)
