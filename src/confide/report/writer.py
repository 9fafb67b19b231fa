"""The report folder of a job: metrics as JSON, a Markdown and an HTML summary, PNG plots, final models."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confide import serde
from confide.report import plots
from confide.report.tables import (
    epsilon_by_round,
    gain_rows,
    gains,
    ledger_matrix,
    ledger_rows,
    markdown_table,
    mean_text,
    metric_rows,
    rows,
    site_names,
)

if TYPE_CHECKING:
    from confide.experiment import JobResult  # the report reads a job's result; the experiment writes none


def result_document(result: JobResult) -> dict[str, Any]:
    """Everything the job measured, as plain JSON-ready data."""
    return {
        "job": json.loads(result.job.model_dump_json()),
        "task": result.description,
        "metric": result.metric,
        "sites": {
            s.name: {
                "train_examples": result.sizes[s.name][0],
                "test_examples": result.sizes[s.name][1],
                "skipped": [{"item": p.item, "reason": p.reason} for p in s.skipped],
                "notes": list(s.notes),
            }
            for s in result.sites
        },
        "models": {
            run.name: {
                "kind": run.kind,
                "sites": list(run.sites),
                "train_seconds": run.seconds,
                "coordination_seconds_per_round": run.coordination_seconds,
                "curve": run.curve,
            }
            for run in result.runs
        },
        "cross_site": {m: {s: dict(v) for s, v in per.items()} for m, per in result.cross.items()},
        "gains": gains(result.cross, result.metric, result.federated),
        "seconds": dict(result.seconds),
        "stopped": {run.name: run.stopped for run in result.runs if run.stopped},
    }


def _json_ready(value: Any) -> Any:
    """``value`` with every NaN or infinite float as None (null): JSON has no NaN, and an undefined metric is none."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def _verdict(result: JobResult) -> list[str]:
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


PER_SITE_PLOTS = 50
"""Above this many sites the report draws no per-site plot (a column or a line per site); its tables hold them."""


def write_report(result: JobResult, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    document = result_document(result)
    files["metrics"] = out / "metrics.json"
    files["metrics"].write_text(json.dumps(_json_ready(document), indent=1, allow_nan=False))
    models = out / "models"
    models.mkdir(exist_ok=True)
    ledgers: list[dict[str, Any]] = []
    for run in result.runs:
        if run.arrays is not None:
            serde.save_arrays(models / f"{run.name.replace(':', '_')}.safetensors", run.arrays)
        for site, ledger in run.ledgers.items():
            ledger.path = out / "privacy" / f"{site}.json"
            ledger.save()
            ledgers.append(json.loads(ledger.path.read_text()))
    metric = result.metric
    per_site = len(result.sites) <= PER_SITE_PLOTS  # a column (or a line) per site: unreadable beyond
    if ledgers and result.job.report.plots and per_site:
        budgets = {str(d["site"]): d.get("budget") for d in ledgers}
        files["ledger"] = plots.privacy_ledger(
            epsilon_by_round(ledgers), budgets, float(ledgers[0]["delta"]), out / "privacy_ledger.png"
        )
    label = metric.replace("_", " ")
    if result.job.report.plots:
        files["curves"] = plots.learning_curves(
            {r.name: r.curve for r in result.runs}, metric, out / "learning_curves.png"
        )
    if result.job.report.plots and per_site:
        files["per_site"] = plots.metric_per_site(result.cross, metric, out / "per_site.png")
        files["heatmap"] = plots.heatmap(result.cross, metric, out / "cross_site_heatmap.png")
        files["gains"] = plots.site_gains(gains(result.cross, metric, result.federated), metric, out / "gains.png")
    header, body = rows(result.cross, metric)
    gain_header, gain_body = gain_rows(result.cross, metric, result.federated)
    long_header, long_body = metric_rows(result.cross, result.metric_keys)
    sites = "\n".join(
        f"- {s.name}: {result.sizes[s.name][0]} training and {result.sizes[s.name][1]} test examples"
        + (f", {len(s.skipped)} skipped" if s.skipped else "")
        + "".join(f"; {note}" for note in s.notes)
        for s in result.sites
    )
    skipped = [f"- {s.name}: {p.item}: {p.reason}" for s in result.sites for p in s.skipped]
    fed = result.job.federation
    md = [
        f"# Confide report: {result.job.name}",
        "",
        f"{result.description}. {len(result.sites)} sites, {fed.rounds} rounds of {fed.local_steps} local steps, "
        f"strategy {fed.strategy}.",
        "Every model had the same budget of local optimisation steps"
        + (
            f"; fine-tuned models add {_finetune_steps(result)} steps at their own site."
            if any(run.kind == "finetuned" for run in result.runs)
            else "."
        ),
        *(
            [f"Per-site plots are left out above {PER_SITE_PLOTS} sites; the tables hold every site."]
            if result.job.report.plots and not per_site
            else []
        ),
        "",
        sites,
        "",
        *(["Skipped inputs:", "", *skipped, ""] if skipped else []),
        *[f"**Training stopped early ({run.name}):** {run.stopped}" for run in result.runs if run.stopped],
        "",
        f"## {label} on every site's held-out test split",
        "",
        markdown_table(header, body),
        "",
        *_verdict(result),
        "",
        "## What federation gained each site",
        "",
        f"Each site's own test split, {label}: its local-only model, the federated model as the site uses it, "
        "the federated model fine-tuned at the site, and pooled training.",
        "",
        markdown_table(gain_header, gain_body),
        "",
        "## Every metric, per site",
        "",
        markdown_table(long_header, long_body),
        "",
    ]
    if ledgers:
        final = ", ".join(f"{d['site']} {d['entries'][-1]['epsilon_total']:.3g}" for d in ledgers if d["entries"])
        md += [
            "## Privacy ledger",
            "",
            f"Epsilon spent by the end (delta {ledgers[0]['delta']:g}): {final}.",
            "",
            markdown_table(*ledger_matrix(ledgers)),
            "",
            *(["![privacy ledger](privacy_ledger.png)", ""] if "ledger" in files else []),
            "Every release, as the sites' ledgers recorded it:",
            "",
            markdown_table(*ledger_rows(ledgers)),
            "",
        ]
    for key, caption in (
        ("heatmap", "cross-site heatmap"),
        ("gains", "gains per site"),
        ("curves", "learning curves"),
        ("per_site", "per site"),
    ):
        if key in files:
            md += [f"![{caption}]({files[key].name})", ""]
    md += [f"Wall time: {result.seconds['total']:.0f} s (data {result.seconds['data']:.0f} s)."]
    files["markdown"] = out / "report.md"
    files["markdown"].write_text("\n".join(md) + "\n")
    files["html"] = out / "report.html"
    privacy = _html_privacy(ledgers, "ledger" in files)
    images = [files[key].name for key in ("heatmap", "gains", "curves", "per_site") if key in files]
    files["html"].write_text(
        _html(result, (header, body), (gain_header, gain_body), (long_header, long_body), privacy, images)
    )
    return files


def _html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows_ = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows_}</tbody></table>"


def _finetune_steps(result: JobResult) -> int:
    steps = result.job.finetune.steps
    return result.job.federation.local_steps if steps is None else steps


Rows = tuple[list[str], list[list[str]]]


def _html_privacy(ledgers: list[dict[str, Any]], plotted: bool) -> str:
    if not ledgers:
        return ""
    image = '<img src="privacy_ledger.png" alt="privacy ledger">' if plotted else ""
    return (
        f"<h2>Privacy ledger</h2><p>Epsilon spent by each site after each round, at delta "
        f"{float(ledgers[0]['delta']):g}.</p>{_html_table(*ledger_matrix(ledgers))}{image}"
        f"<h3>Every release</h3>{_html_table(*ledger_rows(ledgers))}"
    )


def _html(
    result: JobResult, main: Rows, gain: Rows, long: Rows, privacy: str = "", pictures: Sequence[str] = ()
) -> str:
    verdict = "".join(f"<li>{html.escape(line[2:]).replace('**', '')}</li>" for line in _verdict(result))
    label = html.escape(result.metric.replace("_", " "))
    images = "".join(f'<img src="{name}" alt="{name}">' for name in pictures)
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:1em 0;display:block}"
    )
    name = html.escape(result.job.name)
    stopped = "".join(
        f"<p><b>Training stopped early ({html.escape(r.name)}):</b> {html.escape(r.stopped)}</p>"
        for r in result.runs
        if r.stopped
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Confide: {name}</title>"
        f"<style>{style}</style></head><body><h1>Confide report: {name}</h1>"
        f"<p>{html.escape(result.description)}</p>{stopped}"
        f"<h2>{label} on every site's held-out test split</h2>{_html_table(*main)}<ul>{verdict}</ul>"
        f"<h2>What federation gained each site</h2>{_html_table(*gain)}"
        f"{images}<h2>Every metric, per site</h2>{_html_table(*long)}{privacy}</body></html>"
    )
