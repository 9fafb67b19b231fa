"""The report folder of a job: metrics as JSON, a Markdown and an HTML report, PNG plots, final models.

The HTML report is one self-contained file (its style inline, no script, every image embedded as a ``data:`` URI
by the last step over the whole page), so it can be sent as an e-mail attachment; ``report.md`` and the PNG files
are written beside it. Its sections, in order: the overview, each site's data, every model on every site's test
split, the predictions (pictures and intervals, where the task gives them), what federation gained each site, the
figures, every metric, the privacy ledger and the job as run.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confide.report import html_page, job_as_run, ledger_section, plots, results, site_data
from confide.report.model_files import save_models
from confide.report.predictions import prediction_section
from confide.report.section import Section
from confide.report.tables import epsilon_by_round, gains

if TYPE_CHECKING:
    from confide.run_result import JobResult  # the report reads a job's result; the experiment writes none


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
                "dropped": site_data.dropped(s.skipped),
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


PER_SITE_PLOTS = 50
"""Above this many sites the report draws no per-site plot (a column or a line per site); its tables hold them."""


def _save_ledgers(result: JobResult, out: Path) -> list[dict[str, Any]]:
    """Each site's ledger written to ``out/privacy/<site>.json``; their documents."""
    ledgers: list[dict[str, Any]] = []
    for run in result.runs:
        for site, ledger in run.ledgers.items():
            ledger.path = out / "privacy" / f"{site}.json"
            ledger.save()
            ledgers.append(json.loads(ledger.path.read_text()))
    return ledgers


def _draw(result: JobResult, ledgers: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """The report's PNG figures (none when ``report.plots`` is off; per-site ones up to :data:`PER_SITE_PLOTS`)."""
    if not result.job.report.plots:
        return {}
    metric = result.metric
    files = {
        "curves": plots.learning_curves({r.name: r.curve for r in result.runs}, metric, out / "learning_curves.png")
    }
    if len(result.sites) > PER_SITE_PLOTS:  # a column (or a line) per site: unreadable beyond
        return files
    if ledgers:
        budgets = {str(d["site"]): d.get("budget") for d in ledgers}
        files["ledger"] = plots.privacy_ledger(
            epsilon_by_round(ledgers), budgets, float(ledgers[0]["delta"]), out / "privacy_ledger.png"
        )
    files["per_site"] = plots.metric_per_site(result.cross, metric, out / "per_site.png")
    files["heatmap"] = plots.heatmap(result.cross, metric, out / "cross_site_heatmap.png")
    files["gains"] = plots.site_gains(gains(result.cross, metric, result.federated), metric, out / "gains.png")
    return files


def write_report(result: JobResult, out: Path) -> dict[str, Path]:
    ended = datetime.now(UTC)  # the job has just ended: its report is written at once
    out.mkdir(parents=True, exist_ok=True)
    facts = job_as_run.run_facts(result.seconds["total"], ended=ended)
    files: dict[str, Path] = {}
    document = result_document(result)
    document["run"] = facts.document()
    shown = prediction_section(result, out)  # pictures of predictions; each model's bootstrap interval per site
    document["bootstrap"] = shown.intervals
    files.update(shown.files)
    files["metrics"] = out / "metrics.json"
    files["metrics"].write_text(json.dumps(_json_ready(document), indent=1, allow_nan=False))
    save_models(result, out / "models")  # each final model with its card; sites' statistics where kept
    ledgers = _save_ledgers(result, out)
    files.update(_draw(result, ledgers, out))
    left_out = PER_SITE_PLOTS if result.job.report.plots and len(result.sites) > PER_SITE_PLOTS else None
    sections: list[Section] = [
        results.overview(result, left_out),
        site_data.section(result),
        results.cross_site(result),
        shown.section,
        results.gained(result),
        results.figures(files),
        results.every_metric(result),
        ledger_section.section(result, ledgers, files["ledger"].name if "ledger" in files else None),
        job_as_run.section(result.job, facts, result.seconds.get("data")),
    ]
    files["markdown"] = out / "report.md"
    files["markdown"].write_text("\n".join(line for s in sections for line in s.markdown) + "\n")
    files["html"] = out / "report.html"
    page = html_page.page(f"Confide: {result.job.name}", "".join(s.html for s in sections))
    files["html"].write_text(html_page.embed_images(page, out))  # last: every section's pictures embedded
    return files
