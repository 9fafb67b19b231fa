"""Each deployed job's models kept apart at the site: MODELS/<job>/<run>/, a manifest, a latest pointer, and a job
name from the server that never leads a write outside the models folder."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from confide import serde
from confide.config import JobConfig, parse_job
from confide.errors import ConfideError
from confide.records import Arrays, Config
from confide.site.finish import SiteModels, keep_and_adapt
from confide.site.kept_models import JOB_FOLDER_LIMIT, job_folder, latest_run
from confide.workloads.base import SiteTask
from tests.helpers import QuadraticTask, arrays

ENDED = datetime(2025, 3, 14, 10, 15, 0, tzinfo=UTC)
SAFE_FOLDER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
HOSTILE_NAMES = [
    "..",
    ".",
    "../../escape",
    "/etc/cron.d/x",
    "a/../../b",
    "..\\..\\windows",
    "C:\\temp",
    "line\nbreak",
    "nul\x00byte",
    "\x1b[31mred",
    "CON",
    "nul.txt",
    ".hidden",
    "job.",
    "hôpital",
    "",
    " ",
    "x" * 10_000,
]


class KeepingTask(QuadraticTask):
    """A numpy task with what finishing a job needs of a site's task (its own model, its own scores)."""

    def personal(self, arrays: Arrays) -> Arrays:
        return arrays

    def privacy_spend(self, config: Config) -> list[object]:
        return []

    def score(self, arrays: Arrays, data: object) -> dict[str, float]:
        return {}


def _job(name: str = "brain", rounds: int = 3) -> JobConfig:
    document = {"name": name, "data": {"root": "/data"}, "federation": {"rounds": rounds}, "finetune": {"steps": 0}}
    return parse_job(document, source="test job")


def _keep(root: Path, job: JobConfig, value: float, when: datetime = ENDED) -> SiteModels:
    task: SiteTask = KeepingTask(arrays(w=[1.0, 1.0]), 10)
    return keep_and_adapt(task, job, arrays(w=[value, value]), root, server="server.example:8443", when=when)


def _files(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


def test_a_run_keeps_its_models_in_its_own_folder_with_a_manifest_and_a_latest_pointer(tmp_path: Path) -> None:
    root = tmp_path / "models"

    kept = _keep(root, _job(), 0.5)

    run = root.resolve() / "brain" / "20250314T101500Z"
    assert kept.folder == run and kept.global_model == run / "global.safetensors" and kept.finetuned is None
    assert serde.decode_arrays(kept.global_model.read_bytes()).allclose(arrays(w=[0.5, 0.5]))
    assert json.loads(kept.own_test.read_text()) == kept.scores and "distance" in kept.scores["global"]
    manifest = json.loads(kept.manifest.read_text())
    assert manifest["job"] == "brain" and manifest["server"] == "server.example:8443"
    assert manifest["finished_at"] == "2025-03-14T10:15:00+00:00" and manifest["rounds_planned"] == 3
    assert manifest["files"] == {
        "global": "global.safetensors",
        "finetuned": None,
        "own_test": "own-test.json",
        "preprocessing": None,  # no place given: nothing of the site's data to keep
    }
    assert json.loads((root / "brain" / "latest.json").read_text())["run"] == "20250314T101500Z"
    assert latest_run(root, "brain") == run


def test_a_second_run_of_the_same_job_never_overwrites_the_first(tmp_path: Path) -> None:
    root = tmp_path / "models"
    first = _keep(root, _job(), 0.5)
    before = {path: path.read_bytes() for path in _files(first.folder)}

    second = _keep(root, _job(), 2.0)  # the same second: the run folder gets a suffix
    third = _keep(root, _job(), 3.0, when=datetime(2025, 3, 15, tzinfo=UTC))

    assert second.folder.name == "20250314T101500Z-2" and third.folder.name == "20250315T000000Z"
    assert {path: path.read_bytes() for path in _files(first.folder)} == before
    assert serde.decode_arrays(second.global_model.read_bytes()).allclose(arrays(w=[2.0, 2.0]))
    assert latest_run(root, "brain") == third.folder


def test_two_jobs_keep_their_models_apart(tmp_path: Path) -> None:
    root = tmp_path / "models"

    brain = _keep(root, _job("brain"), 0.5)
    table = _keep(root, _job("table"), 2.0)

    assert brain.folder.parent.name == "brain" and table.folder.parent.name == "table"
    assert latest_run(root, "brain") == brain.folder and latest_run(root, "table") == table.folder
    assert serde.decode_arrays(brain.global_model.read_bytes()).allclose(arrays(w=[0.5, 0.5]))


@pytest.mark.parametrize("name", ["e2e", "brain.v2_run-1", "A" * JOB_FOLDER_LIMIT])
def test_a_safe_job_name_is_its_folder_name(name: str) -> None:
    assert job_folder(name) == name


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_job_name_becomes_one_bounded_safe_folder_name(name: str, tmp_path: Path) -> None:
    folder = job_folder(name)

    assert SAFE_FOLDER.match(folder) and len(folder) <= JOB_FOLDER_LIMIT, folder
    assert folder.split(".")[0].upper() not in {"CON", "NUL"}
    assert (tmp_path / folder).resolve().parent == tmp_path.resolve()


def test_names_that_sanitise_alike_still_get_different_folders() -> None:
    names = ["a/b", "a\\b", "a b", "a_b-", "..", "...", "x" * 100, "x" * 101]

    folders = [job_folder(name) for name in names]

    assert len(set(folders)) == len(names), folders


@pytest.mark.parametrize("name", ["..", "../../escape", "/tmp/elsewhere", "sub/dir"])
def test_a_hostile_job_name_from_the_server_writes_nothing_outside_the_models_folder(name: str, tmp_path: Path) -> None:
    """The job file's own check refuses these names, but a job built without it (a server's bug or worse) may carry
    anything: every file still lands under MODELS/<one safe folder>/."""
    root = tmp_path / "kit" / "models"
    job = _job().model_copy(update={"name": name})

    kept = _keep(root, job, 0.5)

    written = _files(tmp_path)
    assert written and all(root.resolve() in path.resolve().parents for path in written), written
    assert kept.folder.parent.parent == root.resolve() and SAFE_FOLDER.match(kept.folder.parent.name)
    assert json.loads(kept.manifest.read_text())["job"] == name  # the manifest keeps the name as the server sent it


def test_a_job_folder_that_leads_outside_the_models_folder_is_refused(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "brain").symlink_to(elsewhere, target_is_directory=True)

    with pytest.raises(ConfideError, match="outside"):
        _keep(root, _job("brain"), 0.5)

    assert not any(elsewhere.iterdir())


@pytest.mark.parametrize("pointer", ['{"run": "../../elsewhere"}', '{"run": "gone"}', "not json", '{"run": 7}'])
def test_a_latest_pointer_that_is_unreadable_or_leads_elsewhere_gives_no_run(pointer: str, tmp_path: Path) -> None:
    root = tmp_path / "models"
    _keep(root, _job(), 0.5)
    (root / "brain" / "latest.json").write_text(pointer)
    (tmp_path / "elsewhere").mkdir()

    assert latest_run(root, "brain") is None


def test_the_kept_model_is_the_final_one_bit_for_bit_and_the_server_may_be_unknown(tmp_path: Path) -> None:
    """The kept model is the one the server sent, as this site uses it, bit for bit."""
    final = Arrays.from_dict({"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    task: SiteTask = KeepingTask(Arrays.from_dict({"w": np.zeros((2, 3), np.float32)}), 10)

    kept = keep_and_adapt(task, _job(), final, tmp_path / "models", when=ENDED)

    assert serde.decode_arrays(kept.global_model.read_bytes()).allclose(final)
    assert json.loads(kept.manifest.read_text())["server"] is None
