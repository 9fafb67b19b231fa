"""One job file, two ways: `confide simulate` and a real federation over gRPC with mutual TLS give the same model.

Not bit for bit: FedAvg folds updates in the order they arrive (that is what keeps the server's memory flat), the
simulator folds them in site order, and float32 addition is not associative. The difference starts at rounding
level and is bounded here: the distance between the two models is at most 0.1 % of the distance training moved them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from confide import serde
from confide.cli import app
from confide.config import JobConfig, load_job
from confide.deploy import serve
from confide.deploy_site import run_site
from confide.job_plan import initial_global, site_task
from confide.kinds.brain_tumor.model import initial_arrays
from confide.provision import parse_federation, provision
from confide.records import Arrays
from confide.site.runner import SiteRunner

pytestmark = pytest.mark.slow

SITES = ["site-1", "site-2", "site-3"]


def _job_file(tmp_path: Path, phantoms: Path, out: Path) -> Path:
    document = {
        "seed": 3,
        "task": {"roi": [16, 16, 16], "init_filters": 4, "lr": 0.003},
        "data": {"root": str(phantoms), "test_fraction": 0.34},
        "federation": {"rounds": 2, "local_steps": 2, "min_sites": 3},
        "compare": [],
        "report": {"out": str(out), "plots": False},
    }
    path = tmp_path / f"job-{out.name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_the_simulated_and_the_deployed_federation_reach_the_same_model(tmp_path: Path) -> None:
    from confide.kinds.brain_tumor.phantom_writer import write_federation

    phantoms = tmp_path / "phantoms"
    write_federation(phantoms, sites=3, cases=3, seed=0)
    simulated = CliRunner().invoke(app, ["simulate", str(_job_file(tmp_path, phantoms, tmp_path / "sim"))])
    assert simulated.exit_code == 0, simulated.output

    job = load_job(_job_file(tmp_path, phantoms, tmp_path / "deployed"))
    kits = tmp_path / "kits"
    provision(parse_federation({"name": "twin", "server": {"host": "127.0.0.1", "port": 8443}, "sites": SITES}), kits)
    port: dict[str, int] = {}
    listening = threading.Event()

    def runner(name: str, site_job: JobConfig) -> SiteRunner:
        return SiteRunner(name, site_task(site_job, phantoms / name, name))

    def server() -> None:
        serve(
            kits / "server",
            job,
            initial=lambda j: initial_arrays(j.task, j.seed),
            port=0,
            wait_s=60,
            on_listen=lambda p: (port.update(p=p), listening.set()),
        )

    serving = threading.Thread(target=server, daemon=True)
    serving.start()
    assert listening.wait(30)
    sites = [
        threading.Thread(
            target=run_site, args=(kits / "sites" / n, runner), kwargs={"address": f"localhost:{port['p']}"}
        )
        for n in SITES
    ]
    for t in sites:
        t.start()
    serving.join(300)
    for t in sites:
        t.join(30)

    sim = serde.decode_arrays((tmp_path / "sim" / "models" / "fedavg.safetensors").read_bytes())
    real = serde.decode_arrays((tmp_path / "deployed" / "global.safetensors").read_bytes())
    start = initial_arrays(job.task, job.seed)
    assert sim.same_layout(real)
    moved = _norm(sim, start)
    apart = _norm(sim, real)
    assert moved > 1e-2  # the federation trained the model
    # Measured: 2e-8 of the distance trained when the updates arrive in site order, 1e-5 when they do not.
    assert apart <= 1e-3 * moved


def test_a_table_job_with_scaffold_deploys_as_it_simulates(tmp_path: Path) -> None:
    """SCAFFOLD over the wire: the control variate travels with the model, each site keeps its own between rounds,
    and the deployed model (controls stripped) matches the simulated one."""
    from confide.site.finish import SiteModels, keep_and_adapt
    from confide.strategies.controls import CONTROL_PREFIX, model_part
    from confide.workloads.registry import make_workload
    from tests.e2e.test_table_jobs import _binary_table

    csv = _binary_table(tmp_path / "table.csv")
    sites = ["north", "south", "east"]

    def job_file(out: Path) -> Path:
        document = {
            "seed": 2,
            "task": {
                "name": "table",
                "target": "label",
                "features": ["x1", "x2", "sex"],
                "categories": {"sex": ["F", "M"]},
                "lr": 0.05,
            },
            "data": {"root": str(csv), "test_fraction": 0.3},
            "federation": {"rounds": 3, "local_steps": 5, "min_sites": 3, "strategy": "scaffold"},
            "finetune": {"steps": 4},
            "report": {"out": str(out), "plots": False},
        }
        path = tmp_path / f"job-{out.name}.yaml"
        path.write_text(yaml.safe_dump(document))
        return path

    simulated = CliRunner().invoke(app, ["simulate", str(job_file(tmp_path / "sim"))])
    assert simulated.exit_code == 0, simulated.output
    job = load_job(job_file(tmp_path / "deployed"))
    kits = tmp_path / "kits"
    provision(parse_federation({"name": "tables", "server": {"host": "127.0.0.1", "port": 8443}, "sites": sites}), kits)
    port: dict[str, int] = {}
    listening = threading.Event()

    tasks: dict[str, Any] = {}
    kept: dict[str, SiteModels] = {}

    def runner(name: str, site_job: JobConfig) -> SiteRunner:
        tasks[name] = site_task(site_job, csv, name)
        return SiteRunner(name, tasks[name])

    def finish(name: str) -> Callable[[JobConfig, Arrays], None]:
        return lambda j, final: kept.update({name: keep_and_adapt(tasks[name], j, final, tmp_path / "kept" / name)})

    serving = threading.Thread(
        target=serve,
        args=(kits / "server", job),
        kwargs={
            "initial": lambda j: initial_global(j, make_workload(j.task)),
            "port": 0,
            "wait_s": 60,
            "on_listen": lambda p: (port.update(p=p), listening.set()),
        },
        daemon=True,
    )
    serving.start()
    assert listening.wait(30)
    threads = [
        threading.Thread(
            target=run_site,
            args=(kits / "sites" / n, runner),
            kwargs={"address": f"localhost:{port['p']}", "on_final": finish(n)},
        )
        for n in sites
    ]
    for t in threads:
        t.start()
    serving.join(120)
    for t in threads:
        t.join(30)

    sim = serde.decode_arrays((tmp_path / "sim" / "models" / "scaffold.safetensors").read_bytes())
    deployed = serde.decode_arrays((tmp_path / "deployed" / "global.safetensors").read_bytes())
    assert any(n.startswith(CONTROL_PREFIX) for n in deployed.names())  # the server's control variate moved too
    assert np.any(deployed[CONTROL_PREFIX + "0.weight"])
    real = model_part(deployed)
    start = make_workload(job.task).initial(job.seed)
    assert sim.same_layout(real)
    assert _norm(sim, real) <= 1e-3 * _norm(sim, start)
    # every site left with the final model (controls stripped), fine-tuned it, and scored both on its own test split
    assert set(kept) == set(sites)
    for name, models in kept.items():
        assert serde.decode_arrays(models.global_model.read_bytes()).allclose(real)
        assert models.finetuned is not None
        tuned = serde.decode_arrays(models.finetuned.read_bytes())
        assert not tuned.allclose(real)
        assert set(models.scores) == {"global", "finetuned"} and 0 <= models.scores["global"]["accuracy"] <= 1
        assert models.own_test == tmp_path.resolve() / "kept" / name / job.name / models.folder.name / "own-test.json"
        assert models.own_test.exists()


def _norm(a: Arrays, b: Arrays) -> float:
    """L2 distance between two models' parameters."""
    squares = (float(np.sum((x.astype(np.float64) - y) ** 2)) for x, y in zip(a.values(), b.values(), strict=True))
    return float(np.sqrt(sum(squares)))
