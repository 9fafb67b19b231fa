"""What a site does when a deployed job ends: keep the final model, adapt it to its own patients, and score both.

The server sends the final model with "done". The site saves it as it uses it (under FedBN with its own
normalisation layers), fine-tunes it on its own training split (``finetune.steps`` local steps; with the job's
DP-SGD when the site trains under it), and scores both on its own test split. Nothing of this leaves the site.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from confide import serde
from confide.config import JobConfig
from confide.finetune import adapt, finetune_config
from confide.records import Arrays
from confide.workloads.base import SiteTask
from confide.workloads.registry import make_workload


@dataclass(frozen=True)
class SiteModels:
    """The files a site keeps and what its own test split says of them (metric -> value, per model)."""

    global_model: Path
    finetuned: Path | None
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


def keep_and_adapt(task: SiteTask, job: JobConfig, final: Arrays, out: Path) -> SiteModels:
    """Save the final model (as this site uses it), fine-tune it when the job asks, score both; write
    ``OUT/JOB-global.safetensors``, ``OUT/JOB-finetuned.safetensors`` and ``OUT/JOB-own-test.json``."""
    out.mkdir(parents=True, exist_ok=True)
    mine = task.personal(final)
    models = {"global": mine}
    global_path = serde.save_arrays(out / f"{job.name}-global.safetensors", mine)
    tuned_path = None
    if job.finetune.enabled:
        tuned, _ = adapt(task, mine, finetune_config(job, make_workload(job.task)))
        models["finetuned"] = tuned
        tuned_path = serde.save_arrays(out / f"{job.name}-finetuned.safetensors", tuned)
    scores = {
        name: {k: float(v) for k, v in task.evaluate(arrays, {}, round=0).metrics.items() if math.isfinite(v)}
        for name, arrays in models.items()
    }
    (out / f"{job.name}-own-test.json").write_text(json.dumps(scores, indent=1))
    return SiteModels(global_path, tuned_path, scores)
