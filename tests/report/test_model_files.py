"""The report's model files: under FedBN each site's own version (its normalisation layers) is written beside the
server's, with a card naming the site, so that `confide predict` on it reproduces what the report scored there."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from confide.config import parse_job
from confide.experiment import run_job
from confide.model_file import read_model
from confide.report.model_files import model_file_name, per_site_folder
from confide.report.progress import ProgressDisplay
from confide.report.writer import write_report

SITES = ("north", "south")


def _table(path: Path) -> Path:
    """Two hospitals whose features are scaled differently (what FedBN's own normalisation layers absorb)."""
    rng = np.random.default_rng(0)
    lines = ["site,x1,x2,label"]
    for scale, site in zip((1.0, 4.0), SITES, strict=True):
        for _ in range(40):
            x1, x2 = rng.normal(size=2)
            lines.append(f"{site},{scale * x1:.4f},{x2:.4f},{int(x1 - 0.7 * x2 > 0)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fedbn_writes_each_sites_own_version_beside_the_servers(tmp_path: Path) -> None:
    job = parse_job(
        {
            "name": "fedbn-files",
            "task": {"name": "table", "target": "label", "model": "mlp", "hidden": 8, "norm": "batch", "lr": 0.05},
            "data": {"root": str(_table(tmp_path / "table.csv")), "test_fraction": 0.3},
            "federation": {"rounds": 2, "local_steps": 3, "min_sites": 2, "strategy": "fedbn"},
            "compare": [],
            "finetune": {"steps": 0},
            "report": {"out": str(tmp_path / "out"), "plots": False},
        }
    )
    result = run_job(job, ProgressDisplay(enabled=False))

    write_report(result, job.report.out)

    models = job.report.out / "models"
    run = next(r for r in result.runs if r.name == "fedbn")
    server_arrays, server_card = read_model(models / model_file_name("fedbn"))
    assert server_card is not None and server_card.site is None
    for site in SITES:
        arrays, card = read_model(models / per_site_folder("fedbn") / f"{site}.safetensors")
        assert card is not None and card.site == site and card.model == "fedbn"
        expected = run.for_site(site)
        assert arrays.names() == expected.names()
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(arrays.items(), expected.items(), strict=True))
        norm = [name for name in arrays.names() if "running_mean" in name]
        assert norm and not np.array_equal(arrays[norm[0]], server_arrays[norm[0]])  # its own layers, not the server's
