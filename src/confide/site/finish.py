"""What a site does when a deployed job ends: keep the final model, adapt it to its own patients, and score both.

The server sends the final model with "done". The site saves it as it uses it (under FedBN with its own
normalisation layers), fine-tunes it on its own training split (``finetune.steps`` local steps; with the job's
DP-SGD when the site trains under it), and scores both on its own test split. Nothing of this leaves the site.
Each run of each job is kept in a folder of its own (:mod:`confide.site.kept_models`).

Every model file describes itself (:mod:`confide.model_file`: the task and its fields, class names or a table's
encoded columns, the job, the metric, Confide's version), and beside them ``preprocessing.json`` holds what the
task says new inputs need (``TaskKind.preprocessing``): a table's imputation and standardisation values learnt
from this site's own training rows; for images and brain-tumour cases, which normalise each case by itself, the
normalisation in words and no statistic. ``confide predict`` reads it from beside the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confide.api import Place
from confide.config import JobConfig
from confide.finetune import adapt, finetune_config
from confide.model_file import confide_version, save_model
from confide.records import Arrays
from confide.site.kept_models import MANIFEST, job_folder, new_run_folder, point_latest, write_json
from confide.workloads.base import SiteTask, Workload
from confide.workloads.describe import card_for, kind_workload
from confide.workloads.registry import make_workload

PREPROCESSING = "preprocessing.json"


@dataclass(frozen=True)
class SiteModels:
    """The files a site keeps and what its own test split says of them (metric -> value, per model)."""

    folder: Path  # this run's folder: MODELS/<job>/<run>
    global_model: Path
    finetuned: Path | None
    own_test: Path
    manifest: Path
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    preprocessing: Path | None = None  # what new inputs need, from this site's own data (never sent)


def keep_and_adapt(
    task: SiteTask,
    job: JobConfig,
    final: Arrays,
    out: Path,
    *,
    server: str | None = None,
    when: datetime | None = None,
    place: Place | None = None,
) -> SiteModels:
    """Save the final model (as this site uses it), fine-tune it when the job asks, score both, in a new folder
    ``OUT/<job>/<run>/`` (``global.safetensors``, ``finetuned.safetensors``, ``own-test.json``,
    ``preprocessing.json``, ``manifest.json``), then point ``OUT/<job>/latest.json`` at it. ``server``: the
    address the site dialled, for the manifest; ``when``: the time the job ended (now by default), which names the
    run; ``place``: this site's own data, as its task read them (for ``preprocessing.json``; None: not written)."""
    ended = (when or datetime.now(UTC)).astimezone(UTC)
    run = new_run_folder(out, job.name, ended)
    workload = make_workload(job.task)
    site = place.site if place is not None else None
    mine = task.personal(final)
    models = {"global": mine}
    global_path = save_model(run / "global.safetensors", mine, card_for(job, workload, "global", site=site, when=ended))
    tuned_path = None
    if job.finetune.enabled:
        tuned, _ = adapt(task, mine, finetune_config(job, workload))
        models["finetuned"] = tuned
        card = card_for(job, workload, "finetuned", site=site, when=ended)
        tuned_path = save_model(run / "finetuned.safetensors", tuned, card)
    kept = _keep_preprocessing(workload, job, place, run / PREPROCESSING, ended)
    scores = {
        name: {k: float(v) for k, v in task.evaluate(arrays, {}, round=0).metrics.items() if math.isfinite(v)}
        for name, arrays in models.items()
    }
    own_test = write_json(run / "own-test.json", scores)
    manifest = {
        "job": job.name,
        "job_folder": job_folder(job.name),
        "run": run.name,
        "server": server,
        "finished_at": ended.isoformat(timespec="seconds"),
        "rounds_planned": job.federation.rounds,
        "strategy": job.federation.strategy,
        "task": job.task.name,
        "confide_version": confide_version(),
        "files": {
            "global": global_path.name,
            "finetuned": tuned_path.name if tuned_path is not None else None,
            "own_test": own_test.name,
            "preprocessing": kept.name if kept is not None else None,
        },
    }
    manifest_path = write_json(run / MANIFEST, manifest)
    point_latest(run, manifest)
    return SiteModels(run, global_path, tuned_path, own_test, manifest_path, scores, kept)


def _keep_preprocessing(
    workload: Workload, job: JobConfig, place: Place | None, target: Path, when: datetime
) -> Path | None:
    """Write what the task says new inputs need, from this site's own data (None: no place, or a task that does
    not say)."""
    if place is None:
        return None
    kind = kind_workload(workload, "keeping the site's preprocessing")
    if kind.kind.preprocessing is None:
        return None
    kept = kind.kind.preprocessing(kind.fields, place)
    document: dict[str, Any] = {
        "site": place.site,
        "job": job.name,
        "written_at": when.isoformat(timespec="seconds"),
        "description": kept.description,
        "statistics": json.loads(json.dumps(dict(kept.statistics), allow_nan=False)),
    }
    return write_json(target, document)


def site_place(job: JobConfig, data: Path, site: str) -> Place:
    """Where a deployed site's own data are, as its task reads them (``--data``, the site's name in them)."""
    return Place(
        Path(data),
        site,
        job.seed,
        float(job.data.test_fraction),
        max_cases=job.data.max_cases_per_site,
        on_bad_case=str(job.data.on_bad_case),
    )
