"""A job's initial_model: the model every run starts from, read from a file (a previous job's, or `confide init`'s),
so that a server given one needs no torch to start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from confide import serde
from confide.cli import app
from confide.config import load_job
from confide.errors import ConfigError
from confide.experiment import run_job
from confide.job_plan import initial_global, start_model
from confide.new_task import new_task
from confide.records import Arrays
from confide.report.progress import ProgressDisplay
from confide.workloads.registry import make_workload


def _study(tmp_path: Path, **changes: object) -> Path:
    folder = tmp_path / "study"
    new_task(folder)
    job = folder / "job.yaml"
    document = yaml.safe_load(job.read_text())
    document["federation"].update({"rounds": 1, "local_steps": 1})
    document.update({"compare": ["local"], "finetune": {"steps": 0}, "report": {"out": str(tmp_path / "report")}})
    document.update(changes)
    job.write_text(yaml.safe_dump(document))
    return job


def test_confide_init_writes_the_tasks_untrained_model_for_the_jobs_seed(tmp_path: Path) -> None:
    job_file = _study(tmp_path)

    result = CliRunner().invoke(app, ["init", str(job_file)])

    assert result.exit_code == 0, result.output
    written = serde.decode_arrays((job_file.parent / "initial.safetensors").read_bytes())
    job = load_job(job_file)
    expected = make_workload(job.task).initial(job.seed)
    assert written.names() == expected.names()
    assert all(np.array_equal(written[n], expected[n]) for n in expected.names())
    assert "initial_model: initial.safetensors" in result.output


def test_every_run_of_a_job_starts_from_its_initial_model(tmp_path: Path) -> None:
    job_file = _study(tmp_path, initial_model="start.safetensors")
    plain = load_job(_study(tmp_path / "plain"))
    untrained = make_workload(plain.task).initial(plain.seed)
    shifted = Arrays.from_dict({n: v + np.float32(0.5) for n, v in untrained.items()})  # "pretrained" elsewhere
    serde.save_arrays(job_file.parent / "start.safetensors", shifted)
    job = load_job(job_file)

    assert job.initial_model == (job_file.parent / "start.safetensors").resolve()  # relative to the job file
    start = start_model(job, None)  # no workload needed
    assert all(np.array_equal(start[n], shifted[n]) for n in shifted.names())
    result = run_job(job, ProgressDisplay(enabled=False))
    # one local step moves a model a little: every run ends near the file's model, far from the untrained one
    trained = {run.name: run.arrays for run in result.runs if run.arrays is not None}
    assert {"fedavg", "local:hospital-a"} <= set(trained)
    for model in trained.values():
        near = max(float(np.abs(model[n] - shifted[n]).max()) for n in shifted.names())
        far = max(float(np.abs(model[n] - untrained[n]).max()) for n in shifted.names())
        assert near < 0.1 < far


def test_a_server_given_its_initial_model_imports_no_torch(tmp_path: Path) -> None:
    job_file = _study(tmp_path, initial_model="start.safetensors", federation={"rounds": 1, "strategy": "scaffold"})
    serde.save_arrays(job_file.parent / "start.safetensors", Arrays.from_dict({"w": np.zeros(3, np.float32)}))
    probe = (
        "import sys\n"
        "import confide.cli, confide.deploy\n"
        "from confide.config import load_job\n"
        "from confide.job_plan import initial_global\n"
        f"model = initial_global(load_job({str(job_file)!r}), None)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(sorted(model.names()))\n"
    )

    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert "'w'" in done.stdout and "scaffold" in done.stdout.lower()  # SCAFFOLD's control variate added to it


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"initial_model .*start\.safetensors cannot be read"),
        (b"not a model", r"initial_model .* is not a Confide safetensors model"),
        ("nan", r"initial_model .* holds NaN or infinite values in \['w'\]"),
    ],
)
def test_a_bad_initial_model_is_named(tmp_path: Path, content: object, message: str) -> None:
    job_file = _study(tmp_path, initial_model="start.safetensors")
    target = job_file.parent / "start.safetensors"
    if content == "nan":
        serde.save_arrays(target, Arrays.from_dict({"w": np.array([1.0, np.nan], np.float32)}))
    elif isinstance(content, bytes):
        target.write_bytes(content)

    with pytest.raises(ConfigError, match=message):
        initial_global(load_job(job_file), None)
