"""The final models of a simulated job, written into the report's ``models/`` folder, each describing itself.

``models/<model>.safetensors`` (``:`` in a name becomes ``_``) holds the model's arrays and its card
(:mod:`confide.model_file`): the task and its fields as the job ran them, class names or a table's encoded columns,
the job, the metric, Confide's version. Where each site uses its own version of a model (FedBN: its own
normalisation layers), ``models/<model>.sites/<site>.safetensors`` holds each site's, the one the report scored
there; ``<model>.safetensors`` holds the server's. Where the task keeps site statistics to prepare new inputs (a table's
imputation and standardisation values, learnt from each site's own training rows), each simulated site's are
written to ``models/preprocessing/<site>.json``: ``confide predict --statistics`` takes them. A task that
normalises each case by itself (brain tumour, images) keeps none.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from confide import serde
from confide.api import Place
from confide.model_file import save_model
from confide.records import Arrays
from confide.site.kept_models import job_folder, write_json

if TYPE_CHECKING:
    from confide.run_result import JobResult


def model_file_name(run_name: str) -> str:
    return f"{run_name.replace(':', '_')}.safetensors"


def save_models(result: JobResult, models: Path) -> list[Path]:
    """Write every final model of ``result`` into ``models`` with its card, and each site's preprocessing
    statistics where the task keeps some; return the files written."""
    from confide.workloads.describe import card_for  # torch: only when there are models to describe

    models.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    when = datetime.now(UTC)
    for run in result.runs:
        if run.arrays is None:
            continue
        target = models / model_file_name(run.name)
        if result.workload is None:  # a result that kept no workload: the arrays alone, as before
            written.append(serde.save_arrays(target, run.arrays))
            continue
        card = card_for(result.job, result.workload, run.name, when=when)
        written.append(save_model(target, run.arrays, card))
        for site, mine in sorted(run.personal.items()):  # FedBN: each site's own normalisation layers
            if not _same(mine, run.arrays):
                own = models / per_site_folder(run.name) / f"{job_folder(site)}.safetensors"
                own.parent.mkdir(parents=True, exist_ok=True)
                written.append(
                    save_model(own, mine, card_for(result.job, result.workload, run.name, site=site, when=when))
                )
    written += _site_statistics(result, models / "preprocessing")
    return written


def per_site_folder(run_name: str) -> str:
    """Where a model that each site uses in its own version (FedBN keeps every site's normalisation layers) has
    those versions: ``models/<model>.sites/<site>.safetensors``, the version the report scored at that site."""
    return f"{run_name.replace(':', '_')}.sites"


def _same(a: Arrays, b: Arrays) -> bool:
    """Whether two Arrays hold the same names and values (a site's version that differs gets a file of its own)."""
    if a.names() != b.names():
        return False
    return all(np.array_equal(x, y) for (_, x), (_, y) in zip(a.items(), b.items(), strict=True))


def _site_statistics(result: JobResult, folder: Path) -> list[Path]:
    from confide.workloads.describe import kind_workload

    if result.workload is None:
        return []
    workload = kind_workload(result.workload, "site statistics")
    keep = workload.kind.preprocessing
    if keep is None or any(s.train is None for s in result.sites):  # on Ray the sites' data stay in the actors
        return []
    data, root = result.job.data, Path(result.job.data.root)
    out: list[Path] = []
    for site in result.sites:
        place = Place(
            root / site.name if (root / site.name).is_dir() else root,
            site.name,
            result.job.seed,
            float(data.test_fraction),
            max_cases=data.max_cases_per_site,
            on_bad_case=str(data.on_bad_case),
        )
        kept = keep(workload.fields, place)
        if not kept.statistics:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        document: dict[str, Any] = {
            "site": site.name,
            "job": result.job.name,
            "description": kept.description,
            "statistics": json.loads(json.dumps(dict(kept.statistics))),
        }
        out.append(write_json(folder / f"{job_folder(site.name)}.json", document))
    return out
