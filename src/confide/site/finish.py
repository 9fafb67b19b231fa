"""What a site does when a deployed job ends: keep the final model, adapt it to its own patients, and score both.

The server sends the final model with "done". The site saves it as it uses it (under FedBN with its own
normalisation layers), fine-tunes it on its own training split (``finetune.steps`` local steps; with the job's
DP-SGD when the site trains under it), and scores both on its own test split. Nothing of this leaves the site.
Each run of each job is kept in a folder of its own (:mod:`confide.site.kept_models`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from confide import serde
from confide.config import JobConfig
from confide.finetune import adapt, finetune_config
from confide.records import Arrays
from confide.site.kept_models import MANIFEST, job_folder, new_run_folder, point_latest, write_json
from confide.workloads.base import SiteTask
from confide.workloads.registry import make_workload


@dataclass(frozen=True)
class SiteModels:
    """The files a site keeps and what its own test split says of them (metric -> value, per model)."""

    folder: Path  # this run's folder: MODELS/<job>/<run>
    global_model: Path
    finetuned: Path | None
    own_test: Path
    manifest: Path
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


def keep_and_adapt(
    task: SiteTask,
    job: JobConfig,
    final: Arrays,
    out: Path,
    *,
    server: str | None = None,
    when: datetime | None = None,
) -> SiteModels:
    """Save the final model (as this site uses it), fine-tune it when the job asks, score both, in a new folder
    ``OUT/<job>/<run>/`` (``global.safetensors``, ``finetuned.safetensors``, ``own-test.json``, ``manifest.json``),
    then point ``OUT/<job>/latest.json`` at it. ``server``: the address the site dialled, for the manifest;
    ``when``: the time the job ended (now by default), which names the run."""
    ended = (when or datetime.now(UTC)).astimezone(UTC)
    run = new_run_folder(out, job.name, ended)
    mine = task.personal(final)
    models = {"global": mine}
    global_path = serde.save_arrays(run / "global.safetensors", mine)
    tuned_path = None
    if job.finetune.enabled:
        tuned, _ = adapt(task, mine, finetune_config(job, make_workload(job.task)))
        models["finetuned"] = tuned
        tuned_path = serde.save_arrays(run / "finetuned.safetensors", tuned)
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
        "files": {
            "global": global_path.name,
            "finetuned": tuned_path.name if tuned_path is not None else None,
            "own_test": own_test.name,
        },
    }
    manifest_path = write_json(run / MANIFEST, manifest)
    point_latest(run, manifest)
    return SiteModels(run, global_path, tuned_path, own_test, manifest_path, scores)
