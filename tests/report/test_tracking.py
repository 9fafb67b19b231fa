"""Tracking (``report.tensorboard``, ``report.mlflow``): a tiny job's TensorBoard event files and MLflow runs, read
back with the standard readers, hold what its own report holds; a bad setting, a missing extra or a store that
cannot be opened stop the job at its start; a store that fails mid-job loses nothing of the job or its report; and
nothing is reached over the network."""

from __future__ import annotations

import errno
import json
import logging
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from confide.config import JobConfig, parse_job
from confide.dashboard.snapshot import PrivacyView
from confide.errors import ConfigError
from confide.experiment import run_job
from confide.privacy.ledger import read_ledgers
from confide.records import Arrays
from confide.report.progress import ProgressDisplay
from confide.report.tables import epsilon_by_round
from confide.report.tracking import Tracking, open_tracking
from confide.report.writer import write_report
from confide.server.loop import RoundResult
from confide.server.reported import ReportedUpdate

SITES = ("north", "south")
ROUNDS = 3


def _table(path: Path) -> Path:
    """Two hospitals, 40 rows each, a linear rule: a job of a few seconds."""
    rng = np.random.default_rng(0)
    lines = ["site,x1,x2,label"]
    for site in SITES:
        for _ in range(40):
            x1, x2 = rng.normal(size=2)
            lines.append(f"{site},{x1:.4f},{x2:.4f},{int(x1 - 0.7 * x2 + 0.3 * rng.normal() > 0)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _job(tmp: Path, *, report: dict[str, Any], **extra: Any) -> JobConfig:
    return parse_job(
        {
            "name": "tracked",
            "seed": 1,
            "task": {"name": "table", "target": "label", "lr": 0.05},
            "data": {"root": str(_table(tmp / "table.csv")), "test_fraction": 0.3},
            "federation": {"rounds": ROUNDS, "local_steps": 2, "min_sites": 2, "evaluate_every": 1},
            "finetune": {"steps": 2},
            "report": {"out": str(tmp / "out"), "plots": False, **report},
            **extra,
        }
    )


class _NoNetwork:
    """Every socket connection and name lookup in this process, refused and counted."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def connect(self, sock: socket.socket, address: Any) -> None:
        if sock.family != socket.AF_UNIX:
            self.attempts.append(f"connect {address!r}")
            raise OSError(errno.ENETUNREACH, "network refused by the test")

    def lookup(self, host: Any, *args: Any, **kwargs: Any) -> Any:
        self.attempts.append(f"lookup {host!r}")
        raise socket.gaierror("name lookups refused by the test")


@dataclass(frozen=True)
class Tracked:
    out: Path
    metrics: dict[str, Any]
    attempts: list[str]


def _run(job: JobConfig) -> Tracked:
    guard = _NoNetwork()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", lambda sock, address: guard.connect(sock, address))
        patch.setattr(socket, "getaddrinfo", guard.lookup)
        result = run_job(job, ProgressDisplay(enabled=False))
        write_report(result, job.report.out)
    metrics = json.loads((job.report.out / "metrics.json").read_text())
    return Tracked(job.report.out, metrics, guard.attempts)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Tracked:
    """One tiny table job (federated evaluation every round, fine-tuning), tracked to both, with its report."""
    tmp = tmp_path_factory.mktemp("tracked")
    return _run(_job(tmp, report={"tensorboard": True, "mlflow": True}))


def _events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def _scalars(events: EventAccumulator, tag: str) -> dict[int, float]:
    return {event.step: event.value for event in events.Scalars(tag)}


def _text(events: EventAccumulator, tag: str) -> str:
    return str(events.Tensors(f"{tag}/text_summary")[0].tensor_proto.string_val[0].decode())


def _mlflow(out: Path) -> tuple[Any, dict[str, Any]]:
    """The MLflow client on the job's store and its runs by name."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("tracked")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    return client, {run.info.run_name: run for run in runs}


def _history(client: Any, run: Any, key: str) -> dict[int, float]:
    return {metric.step: metric.value for metric in client.get_metric_history(run.info.run_id, key)}


def test_tensorboard_holds_every_round_and_the_final_table_as_the_report_does(tracked: Tracked) -> None:
    fed = tracked.metrics["models"]["fedavg"]

    events = _events(tracked.out / "tensorboard" / "fedavg")
    job = _events(tracked.out / "tensorboard" / "job")

    assert _scalars(events, "train/loss") == {
        int(p["round"]): pytest.approx(p["loss"], rel=1e-6) for p in fed["curve"]
    }  # float32 in event files
    assert list(_scalars(events, "round/coordination_seconds").values()) == pytest.approx(
        fed["coordination_seconds_per_round"], rel=1e-6
    )
    assert _scalars(events, "round/participants") == dict.fromkeys(range(1, ROUNDS + 1), 2.0)
    assert _scalars(events, "curve/accuracy") == {
        int(p["round"]): pytest.approx(p["accuracy"], rel=1e-6) for p in fed["curve"] if "accuracy" in p
    }
    for site in SITES:
        assert set(_scalars(events, f"eval/{site}/accuracy")) == set(range(1, ROUNDS + 1))
        final = _scalars(events, f"cross_site/{site}/accuracy")
        assert list(final.values()) == [pytest.approx(tracked.metrics["cross_site"]["fedavg"][site]["accuracy"])]
    assert "| task.name | table |" in _text(job, "config")
    assert "finetuned:north" in _text(job, "cross_site")


def test_tensorboard_means_federated_evaluation_over_the_sites_that_reported(tracked: Tracked) -> None:
    events = _events(tracked.out / "tensorboard" / "fedavg")

    mean = _scalars(events, "eval/all/loss")
    per_site = [_scalars(events, f"eval/{site}/loss") for site in SITES]

    assert mean == {rnd: pytest.approx(sum(s[rnd] for s in per_site) / len(SITES), rel=1e-6) for rnd in mean}
    assert len(mean) == ROUNDS


def test_mlflow_holds_every_round_every_model_on_every_site_and_the_config(tracked: Tracked) -> None:
    fed = tracked.metrics["models"]["fedavg"]
    client, runs = _mlflow(tracked.out)

    parent = runs["tracked"]
    children = {name: run for name, run in runs.items() if name != "tracked"}

    assert set(children) == set(tracked.metrics["cross_site"])  # every model, the fine-tuned ones too
    assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in children.values())
    assert {run.info.status for run in runs.values()} == {"FINISHED"}
    assert _history(client, children["fedavg"], "train/loss") == {int(p["round"]): p["loss"] for p in fed["curve"]}
    assert (
        list(_history(client, children["fedavg"], "round/coordination_seconds").values())
        == (fed["coordination_seconds_per_round"])
    )
    for model, per_site in tracked.metrics["cross_site"].items():
        for site, metrics in per_site.items():
            tracked_value = children[model].data.metrics[f"cross_site/{site}/accuracy"]
            assert tracked_value == metrics["accuracy"], (model, site)
    assert parent.data.params["federation.rounds"] == str(ROUNDS)
    assert parent.data.params["report.mlflow"] == "true"
    assert parent.data.tags["confide.where"] == "simulation"
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "cross_site.json")).read_text())
    assert table["cross_site"] == tracked.metrics["cross_site"]


def test_a_tracked_job_reaches_nothing_over_the_network(tracked: Tracked) -> None:
    assert tracked.attempts == []


def test_a_private_job_tracks_each_sites_epsilon_after_every_round_as_its_ledger(tmp_path: Path) -> None:
    privacy = {"filters": [{"type": "gaussian", "clip": 1.0, "noise_multiplier": 1.0}]}
    job = _job(tmp_path, report={"tensorboard": True, "mlflow": str(tmp_path / "store")}, privacy=privacy)
    job = job.model_copy(update={"federation": job.federation.model_copy(update={"evaluate_every": 0})})

    run = _run(job)

    ledgers = epsilon_by_round(read_ledgers(run.out))
    events = _events(run.out / "tensorboard" / "fedavg")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "store").resolve().as_uri())
    experiment = client.get_experiment_by_name("tracked")
    assert experiment is not None
    fed = client.search_runs([experiment.experiment_id], filter_string="tags.`confide.model` = 'fedavg'")[0]
    assert set(ledgers) == set(SITES)
    for site in SITES:
        assert sorted(ledgers[site]) == list(range(1, ROUNDS + 1))
        assert _history(client, fed, f"privacy/{site}/epsilon") == ledgers[site]
        assert _scalars(events, f"privacy/{site}/epsilon") == {
            rnd: pytest.approx(eps, rel=1e-6) for rnd, eps in ledgers[site].items()
        }
    assert ledgers[SITES[0]][ROUNDS] > ledgers[SITES[0]][1] > 0


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("ftp://tracking.example", "scheme 'ftp'"),
        ("http://", "names a tracking server"),
        ("sqlite://", "names a database file"),
        ("file://elsewhere/folder", "a local folder"),
        ("", "empty"),
        (3, "got int"),
    ],
)
def test_a_bad_mlflow_target_is_an_error_naming_it(value: object, said: str) -> None:
    with pytest.raises(ConfigError, match=r"report\.mlflow") as caught:
        parse_job({"data": {"root": "x"}, "report": {"mlflow": value}})

    assert said in str(caught.value)


@pytest.mark.parametrize(
    "value", [True, False, "runs/mlruns", "file:///tmp/mlruns", "sqlite:///mlflow.db", "https://mlflow.example:5000"]
)
def test_a_folder_or_a_tracking_uri_is_accepted(value: bool | str) -> None:
    job = parse_job({"data": {"root": "x"}, "report": {"mlflow": value}})

    assert job.report.mlflow == value


def test_tensorboard_takes_a_boolean_only() -> None:
    with pytest.raises(ConfigError, match=r"report\.tensorboard"):
        parse_job({"data": {"root": "x"}, "report": {"tensorboard": "yes"}})


@pytest.mark.parametrize(("blocked", "field"), [("mlflow", "report.mlflow"), ("tensorboard", "report.tensorboard")])
def test_a_missing_extra_stops_the_job_at_its_start_saying_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocked: str, field: str
) -> None:
    job = _job(tmp_path, report={"tensorboard": True, "mlflow": True})
    for name in [n for n in sys.modules if n == blocked or n.startswith(f"{blocked}.")] or [blocked]:
        monkeypatch.setitem(sys.modules, name, None)  # every import of it blocked, as when it is not installed

    with pytest.raises(ConfigError) as caught:
        run_job(job, ProgressDisplay(enabled=False))

    assert field in str(caught.value)
    assert "pip install 'confide[tracking]'" in str(caught.value)


def test_a_store_that_cannot_be_opened_stops_the_job_at_its_start(tmp_path: Path) -> None:
    taken = tmp_path / "not-a-folder"
    taken.write_text("a file where the store should go")
    job = _job(tmp_path, report={"tensorboard": True, "mlflow": str(taken)})

    with pytest.raises(ConfigError, match=r"report\.mlflow: cannot open the tracking store"):
        run_job(job, ProgressDisplay(enabled=False))


def test_a_database_store_without_sqlalchemy_says_what_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(tmp_path, report={"mlflow": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # as with mlflow-skinny alone

    with pytest.raises(ConfigError, match=r"report\.mlflow: a sqlite store needs SQLAlchemy") as caught:
        run_job(job, ProgressDisplay(enabled=False))

    assert "pip install sqlalchemy alembic" in str(caught.value)


def test_a_job_tracks_to_an_sqlite_store_its_rounds_and_its_table_as_an_artifact(tmp_path: Path) -> None:
    """MLflow 3 steers users from folders to database stores: a sqlite file, with its artifacts in the report
    folder (``mlartifacts``), read back with MLflow's own client."""
    pytest.importorskip("sqlalchemy", reason="the tracking extra's database stores need SQLAlchemy")
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = _job(tmp_path, report={"mlflow": store}, finetune={"steps": 0})

    tracked = _run(job)

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("tracked")
    assert experiment is not None and experiment.artifact_location.startswith((tracked.out / "mlartifacts").as_uri())
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    fed = tracked.metrics["models"]["fedavg"]
    assert _history(client, runs["fedavg"], "train/loss") == {int(p["round"]): p["loss"] for p in fed["curve"]}
    assert {run.info.status for run in runs.values()} == {"FINISHED"}
    table = json.loads(Path(client.download_artifacts(runs["tracked"].info.run_id, "cross_site.json")).read_text())
    assert table["cross_site"] == tracked.metrics["cross_site"]
    assert tracked.attempts == []  # a file on this machine: nothing reached over the network


def _round(number: int) -> RoundResult:
    return RoundResult(number, SITES, {}, {"loss": 1.0 / number}, {}, 1.0, 0.5)


def test_a_resumed_deployment_goes_on_with_its_mlflow_runs_and_a_new_job_starts_its_own(tmp_path: Path) -> None:
    """The server killed after round 2 (its runs left RUNNING, nothing closed) and resumed from its checkpoint:
    round 3 lands in the same runs, which end FINISHED; the same job started afresh makes new runs."""
    job = _job(tmp_path, report={"mlflow": True})
    killed = open_tracking(job, where="deployment")
    rounds = killed.rounds("fedavg")
    assert rounds is not None
    for number in (1, 2):
        rounds.round_finished(_round(number), Arrays.from_dict({}))

    with open_tracking(job, where="deployment", resume=True) as resumed:
        again = resumed.rounds("fedavg")
        assert again is not None
        again.round_finished(_round(3), Arrays.from_dict({}))

    client, runs = _mlflow(tmp_path / "out")
    assert set(runs) == {"tracked", "fedavg"} and len(client.search_runs([runs["tracked"].info.experiment_id])) == 2
    assert _history(client, runs["fedavg"], "train/loss") == {1: 1.0, 2: 0.5, 3: pytest.approx(1 / 3)}
    assert {run.info.status for run in runs.values()} == {"FINISHED"}

    with open_tracking(job, where="deployment"):  # not resumed: a run of its own
        pass
    parents = client.search_runs([runs["tracked"].info.experiment_id], filter_string="attributes.run_name = 'tracked'")
    assert len(parents) == 2 and runs["tracked"].info.run_id in {run.info.run_id for run in parents}


def test_a_resume_whose_run_file_names_another_store_starts_a_new_run(tmp_path: Path) -> None:
    job = _job(tmp_path, report={"mlflow": True})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mlflow_run.json").write_text('{"uri": "file:///elsewhere", "experiment": "1", "run": "x"}')

    with open_tracking(job, where="deployment", resume=True):
        pass

    _client, runs = _mlflow(tmp_path / "out")
    assert list(runs) == ["tracked"] and runs["tracked"].info.status == "FINISHED"
    kept = json.loads((tmp_path / "out" / "mlflow_run.json").read_text())
    assert kept["run"] == runs["tracked"].info.run_id  # the run file now names the new run


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Both backends' writes of round scalars fail from round 2 on, as on a full disk (closing still works)."""
    from mlflow.tracking import MlflowClient
    from torch.utils.tensorboard import SummaryWriter

    calls = {"mlflow": 0, "tensorboard": 0}
    log_batch, add_scalar = MlflowClient.log_batch, SummaryWriter.add_scalar

    def failing_log_batch(self: Any, run_id: str, *args: Any, **kwargs: Any) -> Any:
        metrics = kwargs.get("metrics", ())
        if any(m.key == "train/loss" and m.step >= 2 for m in metrics):
            calls["mlflow"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return log_batch(self, run_id, *args, **kwargs)

    def failing_add_scalar(self: Any, tag: str, value: Any, step: Any = None, *args: Any, **kwargs: Any) -> Any:
        if tag == "train/loss" and step is not None and step >= 2:
            calls["tensorboard"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return add_scalar(self, tag, value, step, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", failing_log_batch)
    monkeypatch.setattr(SummaryWriter, "add_scalar", failing_add_scalar)
    yield calls


def test_a_store_failing_mid_job_is_logged_and_loses_neither_the_job_nor_its_report(
    tmp_path: Path, full_disk: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    job = _job(tmp_path, report={"tensorboard": True, "mlflow": True})

    with caplog.at_level(logging.WARNING, logger="confide.report.tracking"):
        run = _run(job)

    fed = run.metrics["models"]["fedavg"]
    client, runs = _mlflow(run.out)
    assert [int(p["round"]) for p in fed["curve"]] == list(range(1, ROUNDS + 1))  # the report has every round
    assert (run.out / "report.html").is_file()
    assert full_disk == {"mlflow": 1, "tensorboard": 1}  # each failed once, then was told nothing more
    warnings = [r.getMessage() for r in caplog.records if "stops here" in r.getMessage()]
    assert len(warnings) == 2 and any("report.mlflow" in w for w in warnings)
    assert any("No space left on device" in w for w in warnings)
    assert _history(client, runs["fedavg"], "train/loss") == {1: fed["curve"][0]["loss"]}
    assert runs["tracked"].info.status == "FAILED"  # the store says its record is incomplete


def test_a_deployment_tracks_the_servers_rounds_as_its_rounds_json(tmp_path: Path) -> None:
    from tests.transport.test_grpc import _deployed, _federation

    kits = _federation(tmp_path / "kits")
    job = parse_job(
        {
            "name": "tracked",
            "data": {"root": str(tmp_path)},
            "task": {"lr": 0.5},
            "federation": {"rounds": ROUNDS, "local_steps": 1, "min_sites": 3, "evaluate_every": 1},
            "report": {"out": str(tmp_path / "report"), "tensorboard": True, "mlflow": True},
        }
    )

    _, rounds, _ = _deployed(kits, job, tmp_path)

    client, runs = _mlflow(tmp_path / "report")
    events = _events(tmp_path / "report" / "tensorboard" / "fedavg")
    assert len(rounds) == ROUNDS
    assert runs["tracked"].data.tags["confide.where"] == "deployment"
    assert {run.info.status for run in runs.values()} == {"FINISHED"}
    for site in ("site-1", "site-2", "site-3"):
        expected = {r["round"]: r["eval_metrics"][site]["distance"] for r in rounds}
        assert _history(client, runs["fedavg"], f"eval/{site}/distance") == expected
        assert _scalars(events, f"eval/{site}/distance") == {k: pytest.approx(v, rel=1e-6) for k, v in expected.items()}
    assert _history(client, runs["fedavg"], "round/coordination_seconds") == {
        r["round"]: r["coordination_seconds"] for r in rounds
    }
    assert _history(client, runs["fedavg"], "round/participants") == {r["round"]: 3.0 for r in rounds}
    kept = Path(client.download_artifacts(runs["tracked"].info.run_id, "rounds.json"))
    assert json.loads(kept.read_text()) == rounds


@dataclass(frozen=True)
class Deployed:
    """A private deployment's report folder, each site's own ledger (round -> epsilon, from its kit's ledger.json)
    and what the dashboard that followed it shows of the sites' privacy."""

    out: Path
    ledgers: dict[str, dict[int, float]]
    dashboard: PrivacyView


def _private_deployment(tmp: Path, *, secure: bool) -> Deployed:
    """Three sites over gRPC and mutual TLS on 127.0.0.1, each with the Gaussian filter and its kit's own ledger (as
    `confide site` runs them); the server tracks to TensorBoard and MLflow with a live dashboard following it."""
    from confide.dashboard.live import Dashboard
    from confide.deploy import serve
    from confide.deploy_site import private_runner, run_site
    from tests.helpers import QuadraticTask, arrays
    from tests.site.deployed import TARGETS, federation

    kits = federation(tmp / "kits")
    privacy = {"filters": [{"type": "gaussian", "clip": 1.0, "noise_multiplier": 1.0}], "secure_aggregation": secure}
    job = parse_job(
        {
            "name": "tracked",
            "data": {"root": str(tmp)},
            "task": {"lr": 0.5},
            "federation": {"rounds": ROUNDS, "local_steps": 1, "min_sites": 3, "start_sites": 3},
            "privacy": privacy,
            "report": {"out": str(tmp / "report"), "tensorboard": True, "mlflow": True},
        }
    )
    outcome: dict[str, object] = {}
    listening = threading.Event()

    def on_listen(port: int) -> None:
        outcome["port"] = port
        listening.set()

    def server(dashboard: Dashboard) -> None:
        try:
            outcome["final"] = serve(
                kits / "server",
                job,
                initial=lambda _: arrays(w=[0.0, 0.0]),
                port=0,
                wait_s=60,
                on_listen=on_listen,
                dashboard=dashboard,
            )
        except Exception as exc:  # reported to the test
            outcome["error"] = exc
            listening.set()

    def site(name: str) -> None:
        def runner(site_name: str, site_job: JobConfig) -> Any:
            task = QuadraticTask(TARGETS[site_name], examples=10)
            return private_runner(kits / "sites" / site_name, site_name, site_job, task)

        try:
            outcome[name] = run_site(
                kits / "sites" / name, runner, address=f"localhost:{outcome['port']}", give_up_after_s=30
            )
        except Exception as exc:  # reported to the test
            outcome[name] = exc

    with Dashboard(job, mode="deployment", token="t" * 32) as dashboard:
        serving = threading.Thread(target=server, args=(dashboard,), daemon=True)
        serving.start()
        assert listening.wait(30), "the server did not start listening"
        sites = [threading.Thread(target=site, args=(name,), daemon=True) for name in TARGETS]
        for thread in sites:
            thread.start()
        for thread in [serving, *sites]:
            thread.join(120)
        shown = dashboard.snapshot().privacy
    assert "error" not in outcome, outcome.get("error")
    assert {name: type(outcome.get(name)) for name in TARGETS} == dict.fromkeys(TARGETS, int)  # none failed
    ledgers = {name: epsilon_by_round(read_ledgers(kits / "sites" / name))[name] for name in TARGETS}
    return Deployed(tmp / "report", ledgers, shown)


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure-aggregation"])
def test_a_private_deployment_tracks_the_epsilon_each_site_reported_as_its_own_ledger(
    tmp_path: Path, secure: bool
) -> None:
    deployed = _private_deployment(tmp_path, secure=secure)

    client, runs = _mlflow(deployed.out)
    events = _events(deployed.out / "tensorboard" / "fedavg")
    tracked = runs["fedavg"]
    for site, ledger in deployed.ledgers.items():
        assert sorted(ledger) == list(range(1, ROUNDS + 1))
        assert _history(client, tracked, f"privacy/{site}/epsilon_reported") == ledger  # each round, as the kit's
        assert _scalars(events, f"privacy/{site}/epsilon_reported") == {
            rnd: pytest.approx(eps, rel=1e-6) for rnd, eps in ledger.items()
        }
        assert f"privacy/{site}/epsilon" not in tracked.data.metrics  # the server holds no ledger: nothing claims it
        assert ledger[ROUNDS] > ledger[1] > 0
    # the dashboard heard the same answers through the same observed transport
    assert deployed.dashboard.source == "reported"
    assert {view.site: {p.round: p.epsilon for p in view.points} for view in deployed.dashboard.ledgers} == (
        deployed.ledgers
    )


class _Told:
    """A tracking backend that keeps the privacy scalars it is told, by round."""

    label = "test"

    def __init__(self) -> None:
        self.privacy: list[tuple[int, dict[str, float]]] = []

    def scalars(self, run: str, step: int, values: Mapping[str, float]) -> None:
        self.privacy.append((step, {k: v for k, v in values.items() if k.startswith("privacy/")}))

    def config(self, params: Mapping[str, str], document: Mapping[str, Any]) -> None: ...

    def table(self, name: str, markdown: str, document: Mapping[str, Any]) -> None: ...

    def attach(self, path: Path) -> None: ...

    def close(self, failed: bool) -> None: ...


def _closed(rnd: int) -> RoundResult:
    return RoundResult(round=rnd, sites=("a",), failures={}, train_metrics={}, eval_metrics={}, seconds=0.1)


def test_a_round_tracks_the_last_epsilon_each_site_reported_for_it_and_nothing_else() -> None:
    sink = _Told()
    rounds = Tracking([sink]).rounds("fedavg")
    assert rounds is not None

    rounds.round_started(2, ["a", "b", "c"])
    rounds.heard("a", ReportedUpdate(2, False, 1, meta={"epsilon": 0.5}))
    rounds.round_started(2, ["a", "b", "c"])  # the round missed its quorum and runs again
    rounds.heard("a", ReportedUpdate(2, True, 1, meta={"epsilon": 0.75}))  # charged again: the last one counts
    rounds.heard("b", ReportedUpdate(1, False, 1, meta={"epsilon": 9.0}))  # a late answer of round 1
    rounds.heard("c", ReportedUpdate(2, False, 1, meta={"epsilon": True}))  # no number
    rounds.heard("d", ReportedUpdate(7, False, 1, meta={"epsilon": 9.0}))  # a round that is not running
    rounds.round_finished(_closed(2), Arrays.from_dict({}))
    rounds.round_started(3, ["a"])
    rounds.round_finished(_closed(3), Arrays.from_dict({}))

    assert sink.privacy == [(2, {"privacy/a/epsilon_reported": 0.75}), (3, {})]
