"""The report folder of a job: metrics as JSON, a Markdown and an HTML summary, PNG plots, final models."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from confide import serde
from confide.experiment import JobResult
from confide.report import plots
from confide.report.tables import ledger_rows, markdown_table, region_rows, rows


def result_document(result: JobResult) -> dict[str, Any]:
    """Everything the job measured, as plain JSON-ready data."""
    return {
        "job": json.loads(result.job.model_dump_json()),
        "sites": {
            s.name: {
                "train_cases": len(s.train),
                "test_cases": len(s.test),
                "skipped": [{"case": p.case_id, "reason": p.reason} for p in s.problems],
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
        "seconds": dict(result.seconds),
    }


def _verdict(result: JobResult) -> list[str]:
    fed = next(r.name for r in result.runs if r.kind == "federated")
    every = {m: per["all"]["dice_mean"] for m, per in result.cross.items()}
    lines = [f"- Federated ({fed}) mean Dice over all sites' test cases: **{every[fed]:.3f}**"]
    locals_ = {m: v for m, v in every.items() if m.startswith("local:")}
    if locals_:
        best_local = max(locals_, key=lambda m: locals_[m])
        beaten = sum(every[fed] > v for v in locals_.values())
        lines.append(
            f"- Above {beaten} of {len(locals_)} local-only models; "
            f"best local-only: {best_local} {locals_[best_local]:.3f}"
        )
    if "pooled" in every:
        lines.append(f"- Pooled: {every['pooled']:.3f} (federated - pooled = {every[fed] - every['pooled']:+.3f})")
    return lines


def write_report(result: JobResult, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    document = result_document(result)
    files["metrics"] = out / "metrics.json"
    files["metrics"].write_text(json.dumps(document, indent=1))
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
    if result.job.report.plots:
        files["curves"] = plots.learning_curves({r.name: r.curve for r in result.runs}, out / "learning_curves.png")
        files["dice"] = plots.dice_per_site(result.cross, out / "dice_per_site.png")
        files["heatmap"] = plots.heatmap(result.cross, out / "cross_site_heatmap.png")
    header, body = rows(result.cross)
    long_header, long_body = region_rows(result.cross)
    sites = "\n".join(
        f"- {s.name}: {len(s.train)} training and {len(s.test)} test cases"
        + (f", {len(s.problems)} skipped" if s.problems else "")
        for s in result.sites
    )
    fed = result.job.federation
    md = [
        f"# Confide report: {result.job.name}",
        "",
        f"{len(result.sites)} sites, {fed.rounds} rounds of {fed.local_steps} local steps, strategy {fed.strategy}, "
        f"model {result.job.task.model} (init_filters {result.job.task.init_filters}), "
        f"ROI {list(result.job.task.roi)}.",
        "Every model had the same budget of local optimisation steps.",
        "",
        sites,
        "",
        "## Dice on every site's held-out test cases",
        "",
        markdown_table(header, body),
        "",
        *_verdict(result),
        "",
        "## Per region, per site",
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
            markdown_table(*ledger_rows(ledgers)),
            "",
        ]
    if result.job.report.plots:
        md += ["![learning curves](learning_curves.png)", "", "![Dice per site](dice_per_site.png)", ""]
        md += ["![cross-site heatmap](cross_site_heatmap.png)", ""]
    md += [f"Wall time: {result.seconds['total']:.0f} s (data {result.seconds['data']:.0f} s)."]
    files["markdown"] = out / "report.md"
    files["markdown"].write_text("\n".join(md) + "\n")
    files["html"] = out / "report.html"
    files["html"].write_text(_html(result, header, body, long_header, long_body))
    return files


def _html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows_ = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows_}</tbody></table>"


def _html(
    result: JobResult,
    header: list[str],
    body: list[list[str]],
    long_header: list[str],
    long_body: list[list[str]],
) -> str:
    verdict = "".join(f"<li>{html.escape(line[2:]).replace('**', '')}</li>" for line in _verdict(result))
    images = ""
    if result.job.report.plots:
        images = "".join(
            f'<img src="{name}" alt="{name}">'
            for name in ("learning_curves.png", "dice_per_site.png", "cross_site_heatmap.png")
        )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:1em 0;display:block}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Confide: {html.escape(result.job.name)}</title>"
        f"<style>{style}</style></head><body><h1>Confide report: {html.escape(result.job.name)}</h1>"
        f"<h2>Dice on every site's held-out test cases</h2>{_html_table(header, body)}<ul>{verdict}</ul>"
        f"{images}<h2>Per region, per site</h2>{_html_table(long_header, long_body)}</body></html>"
    )
