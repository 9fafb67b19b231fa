"""A task written outside Confide on its public API (confide.api.TaskKind), named by entry point in a job file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from confide.config import load_job
from confide.deploy_site import site_code
from confide.errors import ConfigError, RoundFailed, TaskError
from confide.experiment import run_job
from confide.job_plan import site_task
from confide.new_task import new_task
from confide.report.progress import ProgressDisplay
from confide.workloads.registry import make_workload

QUIET = ProgressDisplay(enabled=False)


def _study(tmp_path: Path, **changes: object) -> Path:
    """``confide new`` in tmp_path, the job shortened (and changed) for a test."""
    folder = tmp_path / "study"
    new_task(folder)
    job = folder / "job.yaml"
    document = yaml.safe_load(job.read_text())
    document["federation"].update({"rounds": 3, "local_steps": 5})
    document["report"] = {"out": str(tmp_path / "report"), "plots": False}
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            document.setdefault(section, {})[field] = value
        else:
            document[section] = value
    job.write_text(yaml.safe_dump(document))
    return job


def test_confide_new_writes_a_task_that_trains_across_the_sites(tmp_path: Path) -> None:
    job = load_job(_study(tmp_path))

    result = run_job(job, QUIET)

    assert result.metric == "balanced_accuracy"
    assert {s.name for s in result.sites} == {"hospital-a", "hospital-b", "hospital-c"}
    federated = result.cross["fedavg"]["all"]["balanced_accuracy"]
    assert 0.6 < federated <= 1.0  # the generated labels follow one shared rule: three rounds learn it
    assert set(result.cross) >= {"local:hospital-a", "pooled", "fedavg", "finetuned:hospital-c"}


def test_the_task_fields_are_checked_by_the_tasks_own_model(tmp_path: Path) -> None:
    job = load_job(_study(tmp_path, task__hiden=8))  # a typo of hidden

    with pytest.raises(ConfigError, match=r"task\.hiden"):
        make_workload(job.task)


def test_a_field_of_the_wrong_type_is_named(tmp_path: Path) -> None:
    job = load_job(_study(tmp_path, task__hidden="many"))

    with pytest.raises(ConfigError, match=r"task\.hidden: .*integer"):
        make_workload(job.task)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("missing:task", r"no missing\.py"),
        ("task:nothing", r"has no 'nothing'"),
        ("task:Fields", r"expected a confide\.api\.TaskKind"),
        ("os:path", r"no os\.py"),  # a module outside the task's folder is never imported for it
    ],
)
def test_a_bad_entry_is_named(tmp_path: Path, entry: str, message: str) -> None:
    job = load_job(_study(tmp_path, task__entry=entry))

    with pytest.raises(ConfigError, match=message):
        make_workload(job.task)


def test_an_entry_that_is_not_module_colon_attribute_is_refused_when_the_job_is_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"task\.entry"):
        load_job(_study(tmp_path, task__entry="task.py"))


def test_a_module_that_fails_to_import_is_named_with_its_error(tmp_path: Path) -> None:
    job_file = _study(tmp_path)
    (job_file.parent / "task.py").write_text("import not_a_module_anywhere\n")

    with pytest.raises(ConfigError, match=r"importing task in .*ModuleNotFoundError"):
        make_workload(load_job(job_file).task)


def test_a_deployed_site_imports_the_task_only_from_its_own_code_folder(tmp_path: Path) -> None:
    job = load_job(_study(tmp_path))  # as the server sends it, naming the server's folder
    own = tmp_path / "site-copy"
    new_task(own)

    with pytest.raises(ConfigError, match="--code"):
        site_code(job, None)
    at_site = site_code(job, own)

    assert at_site.task.code == own.resolve()  # type: ignore[union-attr]
    task = site_task(at_site, own / "data" / "hospital-b", "hospital-b")
    assert task.evaluate(make_workload(at_site.task).initial(0), {}, round=0).num_examples > 0


def test_an_evaluate_that_forgets_a_metric_is_named(tmp_path: Path) -> None:
    job_file = _study(tmp_path)
    task_py = job_file.parent / "task.py"
    task_py.write_text(task_py.read_text().replace('"accuracy": float(', '"acc": float('))
    job = load_job(job_file)

    with pytest.raises(TaskError, match="returned no 'accuracy'"):
        run_job(job, QUIET)


def test_a_loss_that_becomes_nan_stops_training_naming_the_site_and_step(tmp_path: Path) -> None:
    job_file = _study(tmp_path, task__lr=10.0, task__optimizer="sgd")
    task_py = job_file.parent / "task.py"
    task_py.write_text(
        task_py.read_text().replace(
            "    metrics=METRICS,",
            "    metrics=METRICS,\n    loss=lambda f, m, b: m(b[0]).sum() * float('nan'),",
        )
    )

    # the site's refusal reaches the server, which names it when the round cannot close
    with pytest.raises(RoundFailed, match=r"site hospital-\w: training loss became nan at step 1 of round 1"):
        run_job(load_job(job_file), QUIET)


@pytest.mark.parametrize("strategy", ["fedprox", "scaffold", "median"])
def test_the_strategies_work_for_a_users_task(tmp_path: Path, strategy: str) -> None:
    job = load_job(_study(tmp_path, federation__strategy=strategy, compare=[]))

    result = run_job(job, QUIET)

    assert 0.5 < result.cross[strategy]["all"]["balanced_accuracy"] <= 1.0


def test_dp_sgd_trains_a_users_task_and_its_ledger_records_the_spend(tmp_path: Path) -> None:
    job = load_job(
        _study(tmp_path, compare=[], privacy={"dp_sgd": {"noise_multiplier": 1.0, "clip": 1.0}}, finetune={"steps": 0})
    )

    result = run_job(job, QUIET)

    federated = next(r for r in result.runs if r.kind == "federated")
    spent = [ledger.epsilon for ledger in federated.ledgers.values()]
    assert len(spent) == 3 and all(0 < eps < 100 for eps in spent)
    assert 0.0 <= result.cross["fedavg"]["all"]["balanced_accuracy"] <= 1.0  # scored like any other job


def test_confide_new_refuses_a_folder_that_is_not_empty_and_a_bad_name(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")

    with pytest.raises(ConfigError, match="already exists"):
        new_task(taken)
    with pytest.raises(ConfigError, match="not a usable name"):
        new_task(tmp_path / "-bad")
    assert (taken / "notes.txt").read_text() == "mine"  # nothing already there is touched


def test_the_confide_new_command_prints_the_next_step(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from confide.cli import app

    result = CliRunner().invoke(app, ["new", str(tmp_path / "my_study")])

    assert result.exit_code == 0, result.output
    assert "confide simulate" in result.output and (tmp_path / "my_study" / "task.py").is_file()
    assert load_job(tmp_path / "my_study" / "job.yaml").task.name == "python"


def test_device_auto_spreads_the_sites_over_the_gpus_and_falls_back_to_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from confide.workloads.kind import pick_device

    assert pick_device("auto", 3).type == "cpu" or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    placed = [str(pick_device("auto", i)) for i in range(4)]

    assert placed == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert str(pick_device("cuda:1", 0)) == "cuda:1" and str(pick_device("cpu", 1)) == "cpu"


def test_a_cuda_device_on_a_machine_without_one_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from confide.workloads.kind import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    with pytest.raises(TaskError, match=r"task\.device 'cuda:0': this machine has no CUDA device"):
        pick_device("cuda:0")


def test_a_task_that_refuses_dp_sgd_is_refused_with_its_reason_when_a_job_asks_for_it(tmp_path: Path) -> None:
    job_file = _study(tmp_path, privacy={"dp_sgd": {"noise_multiplier": 1.0, "clip": 1.0}})
    task_py = job_file.parent / "task.py"
    task_py.write_text(
        task_py.read_text().replace(
            "    metrics=METRICS,",
            "    metrics=METRICS,\n    dp_sgd_refusal=lambda f: 'the loss of a batch is not a mean of per-row terms',",
        )
    )
    job = load_job(job_file)
    workload = make_workload(job.task)
    sites = workload.load_sites(job.data, 0, lambda _: None)
    from confide.privacy.config import DpSgdSpec

    reason = "DP-SGD cannot train task task:task: the loss of a batch is not a mean of per-row terms"
    with pytest.raises(TaskError, match=reason):
        workload.task(sites[0].train, None, site="hospital-a", seed=0, dp_sgd=DpSgdSpec(noise_multiplier=1.0, clip=1.0))
    assert workload.task(sites[0].train, None, site="hospital-a", seed=0, dp_sgd=None) is not None


def test_a_site_runs_only_the_entry_its_own_copy_of_the_job_names(tmp_path: Path) -> None:
    job = load_job(_study(tmp_path))  # names task:task
    own = tmp_path / "site-copy"
    new_task(own)
    (own / "helper.py").write_text("raise SystemExit('the server chose this module')\n")
    hostile = job.model_copy(update={"task": job.task.model_copy(update={"entry": "helper:task"})})

    with pytest.raises(ConfigError, match=r"names the task entry 'helper:task'.*names 'task:task'"):
        site_code(hostile, own)
    (own / "job.yaml").unlink()
    with pytest.raises(ConfigError, match=r"has no job\.yaml"):
        site_code(job, own)
