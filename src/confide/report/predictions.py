"""The report's section on predictions: pictures of what the models predicted, and how sure each score is.

Every final model is run (as each site uses it) on every site's held-out test split through the task's
``outputs`` (:class:`confide.api.Outputs`). From those outputs:

- **Bootstrap intervals**: the headline metric's 95 % percentile bootstrap interval over the split's examples
  (:mod:`confide.report.bootstrap`, 1000 resamples from a generator seeded by the job, the model and the site),
  shown beside the split's n, and saved in ``metrics.json`` under ``bootstrap`` (model -> site -> value, low,
  high, n, level, resamples).
- **Segmentation**: for a few test cases per site (the first :data:`CASES`), one axial slice with the true regions
  outlined in green and the predicted ones in red, for the federated model and the best local-only model, each
  titled with the case's Dice (``predictions_<site>.png``).
- **Classification**: a confusion matrix per model over every site's test split (``confusion_matrices.png``) and
  ROC curves per site of the federated, the best local-only and the pooled model (``roc_curves.png``).
- **Survival**: Kaplan-Meier curves per site of the federated model's high- and low-risk halves of the test split
  (split at the site's median predicted risk; ``kaplan_meier.png``).

Pictures cover the first :data:`PICTURED_SITES` sites; the intervals cover every model and site. The section is
Markdown and HTML; images are referenced by file name (the writer embeds them).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from confide.api_use import ClassOutputs, Outputs, RiskOutputs, SegmentationSlices
from confide.report import html_page
from confide.report import prediction_plots as draw
from confide.report.bootstrap import LEVEL, MIN_EXAMPLES, RESAMPLES, Interval, percentile_interval
from confide.report.section import NONE, Section
from confide.report.tables import markdown_table
from confide.site.kept_models import job_folder

if TYPE_CHECKING:
    from confide.run_result import JobResult

CASES = 3
"""Test cases pictured per site (segmentation)."""
PICTURED_SITES = 8
"""Sites pictured; the intervals cover every site."""
MATRIX_SITES = 8
"""Up to this many sites the intervals are a table with a column per site; above it, one row per model and site."""

Grid = dict[str, dict[str, Outputs]]  # model -> site -> outputs


@dataclass(frozen=True)
class PredictionSection:
    """What the writer adds: the report's section, the PNG files, and the intervals for metrics.json."""

    section: Section = NONE
    files: dict[str, Path] = field(default_factory=dict)
    intervals: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def _why_not(result: JobResult) -> str | None:
    if result.workload is None:
        return "the job's result kept no workload"
    from confide.workloads.kind import KindWorkload

    if not isinstance(result.workload, KindWorkload) or result.workload.kind.outputs is None:
        return "the task gives no per-example outputs (TaskKind.outputs)"
    if any(s.test is None for s in result.sites):
        return "the sites' test splits stay where they were read (the Ray engine)"
    return None


def model_outputs(result: JobResult) -> Grid:
    """Every final model's outputs on every site's test split, the model as each site uses it."""
    import torch

    from confide.strategies.controls import model_part
    from confide.tasks.torch_io import load_arrays
    from confide.workloads.kind import KindWorkload

    workload = result.workload
    assert isinstance(workload, KindWorkload) and workload.kind.outputs is not None
    produce = workload.kind.outputs
    network = workload.network().to(workload.place())
    grid: Grid = {}
    for run in result.runs:
        if run.arrays is None:
            continue
        grid[run.name] = {}
        for site in result.sites:
            load_arrays(network, model_part(run.for_site(site.name)))
            network.eval()
            with torch.no_grad():
                grid[run.name][site.name] = produce(workload.fields, network, site.test)
    return grid


def intervals(grid: Grid, seed: int, resamples: int = RESAMPLES) -> dict[str, dict[str, Interval]]:
    """The headline's bootstrap interval for every model and site (seeded by ``seed``, the model and the site)."""
    from confide.tasks.loop import seed_of

    return {
        model: {
            site: percentile_interval(
                got.headline,
                got.n,
                np.random.default_rng(seed_of(seed, "bootstrap", model, site)),
                resamples=resamples,
                per_example=got.per_example,
            )
            for site, got in per_site.items()
        }
        for model, per_site in grid.items()
    }


def _text(interval: Interval) -> str:
    if not math.isfinite(interval.value):
        return "n/a"
    if not math.isfinite(interval.low):
        why = f"n < {MIN_EXAMPLES}" if interval.n < MIN_EXAMPLES else "undefined on most resamples"
        return f"{interval.value:.3f} (no interval: {why})"
    return f"{interval.value:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def interval_rows(table: dict[str, dict[str, Interval]]) -> tuple[list[str], list[list[str]]]:
    """The intervals as a table: a column per site (with its n) up to :data:`MATRIX_SITES` sites, else one row per
    model and site."""
    sites = list(next(iter(table.values())))
    if len(sites) <= MATRIX_SITES:
        n = next(iter(table.values()))
        header = ["model", *(f"{site} (n {n[site].n})" for site in sites)]
        return header, [[model, *(_text(per[site]) for site in sites)] for model, per in table.items()]
    header = ["model", "site", "n", "value [95 % interval]"]
    return header, [[model, site, str(i.n), _text(i)] for model, per in table.items() for site, i in per.items()]


def best_local(result: JobResult) -> str | None:
    """The local-only model with the best mean headline over the sites (None without one)."""
    scores = {
        name: per["all"][result.metric]
        for name, per in result.cross.items()
        if name.startswith("local:") and math.isfinite(per["all"][result.metric])
    }
    return max(scores, key=lambda name: scores[name]) if scores else None


def _shown_models(result: JobResult, grid: Grid) -> list[str]:
    names = [result.federated, best_local(result), "pooled"]
    return [n for n in dict.fromkeys(names) if n is not None and n in grid]


def _pictures(result: JobResult, grid: Grid, out: Path) -> tuple[dict[str, Path], list[str]]:
    """The PNG files and one caption line per file."""
    files: dict[str, Path] = {}
    captions: list[str] = []
    fed = result.federated
    sites = [s.name for s in result.sites][:PICTURED_SITES]
    first = grid[fed][sites[0]].view if sites else None
    if isinstance(first, SegmentationSlices):
        shown = [m for m in (fed, best_local(result)) if m is not None]
        for site in sites:
            views = [(m, grid[m][site].view) for m in shown]
            slices = [(m, v) for m, v in views if isinstance(v, SegmentationSlices)]
            cases = list(range(min(CASES, slices[0][1].images.shape[0])))
            path = out / f"predictions_{job_folder(site)}.png"
            label = result.metric.replace("_", " ")
            files[f"predictions:{site}"] = draw.segmentation_overlays(site, slices, cases, label, path)
            captions.append(f"{site}: {len(cases)} test case(s), {' and '.join(shown)}")
    elif isinstance(first, ClassOutputs):
        pooled = {m: _concat([g.view for g in per.values()]) for m, per in grid.items()}
        classes = {m: v for m, v in pooled.items() if v is not None}
        if classes:
            files["confusion"] = draw.confusion_matrices(classes, out / "confusion_matrices.png")
            captions.append("confusion matrices, every site's test split together")
        panels = {
            site: {m: v for m in _shown_models(result, grid) if isinstance(v := grid[m][site].view, ClassOutputs)}
            for site in sites
        }
        files["roc"] = draw.roc_curves(panels, out / "roc_curves.png")
        captions.append("ROC curves on each site's test split")
    elif isinstance(first, RiskOutputs):
        risks = {site: v for site in sites if isinstance(v := grid[fed][site].view, RiskOutputs)}
        files["kaplan_meier"] = draw.kaplan_meier_groups(risks, fed, out / "kaplan_meier.png")
        captions.append(f"Kaplan-Meier curves of {fed}'s risk groups, per site")
    return files, captions


def _concat(views: Sequence[Any]) -> ClassOutputs | None:
    parts = [v for v in views if isinstance(v, ClassOutputs)]
    if not parts or len({p.classes for p in parts}) != 1:
        return None
    return ClassOutputs(
        np.concatenate([p.truth for p in parts]), np.concatenate([p.probabilities for p in parts]), parts[0].classes
    )


def prediction_section(result: JobResult, out: Path, *, resamples: int = RESAMPLES) -> PredictionSection:
    """The section for ``result`` (see the module docstring), its pictures written into ``out``."""
    title = "## Predictions"
    why = _why_not(result)
    if why is not None:
        line = f"No pictures of predictions or bootstrap intervals: {why}."
        return PredictionSection(Section((title, "", line, ""), f"<h2>Predictions</h2><p>{html.escape(line)}</p>"))
    grid = model_outputs(result)
    table = intervals(grid, result.job.seed, resamples)
    header, body = interval_rows(table)
    files, captions = _pictures(result, grid, out) if result.job.report.plots else ({}, [])
    label = result.metric.replace("_", " ")
    intro = (
        f"Each model, as each site uses it, on each site's held-out test split: {label} and its "
        f"{LEVEL:.0%} percentile bootstrap interval ({resamples} resamples of the split's cases, seeded by the job), "
        f"with n, the cases in the split (below {MIN_EXAMPLES} cases no interval is given). A small test split gives a "
        "wide interval: read the interval, not the point alone."
    )
    md = [title, "", intro, "", markdown_table(header, body), ""]
    words = (0, 1) if header[1] == "site" else (0,)  # model (and site) names: text, aligned left
    parts = [f"<h2>Predictions</h2><p>{html.escape(intro)}</p>{html_page.table(header, body, text_columns=words)}"]
    for (key, path), caption in zip(files.items(), captions, strict=True):
        md += [f"![{caption}]({path.name})", ""]
        parts.append(
            f'<figure><img src="{html.escape(path.name)}" alt="{html.escape(key)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    if len(result.sites) > PICTURED_SITES and files:
        note = f"Pictures show the first {PICTURED_SITES} of {len(result.sites)} sites; the table holds every site."
        md += [note, ""]
        parts.append(f"<p>{html.escape(note)}</p>")
    saved = {m: {s: {"metric": result.metric, **i.as_dict()} for s, i in per.items()} for m, per in table.items()}
    return PredictionSection(Section(tuple(md), "".join(parts)), files, saved)
