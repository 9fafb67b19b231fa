"""The README's deployment walk-through, as written, on the shipped heart-disease table: four hospitals whose
certificate names (cleveland, va-long-beach) differ from the table's site values (Cleveland, VA Long Beach), each
naming its own rows with --data-site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from confide.provision import load_federation, provision
from tests.e2e.processes import finish, free_port, start

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT.parent / "shared" / "data" / "heart_disease" / "heart_disease_uci.csv"
HOSPITALS = {
    "cleveland": "Cleveland",
    "hungary": "Hungary",
    "switzerland": "Switzerland",
    "va-long-beach": "VA Long Beach",
}


def _own(rows: str) -> list[str]:
    return ["--data", str(TABLE), "--data-site", rows, "--approve"]  # the operator approves the job it is shown


@pytest.mark.skipif(not TABLE.is_file(), reason=f"the heart-disease table is not at {TABLE}")
def test_the_readme_walkthrough_deploys_the_heart_disease_table(tmp_path: Path) -> None:
    federation = tmp_path / "federation.yaml"  # as README.md writes it
    federation.write_text(
        "name: heart-fed\n"
        "server: {host: localhost, port: 8443}\n"
        "sites: [cleveland, hungary, switzerland, va-long-beach]\n"
    )
    provision(load_federation(federation), tmp_path / "fed")
    job = yaml.safe_load((ROOT / "jobs" / "heart_disease.yaml").read_text())
    job["federation"].update({"rounds": 2, "round_deadline_s": 120})
    job["report"] = {"out": str(tmp_path / "report")}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    port = free_port()
    server = start("server", str(tmp_path / "job.yaml"), "--kit", str(tmp_path / "fed" / "server"), "--port", str(port))
    sites = [
        start("site", "--kit", str(tmp_path / "fed" / "sites" / kit), *_own(rows), "--server", f"localhost:{port}")
        for kit, rows in HOSPITALS.items()
    ]
    server_out, site_outs = finish(server, sites)

    assert server.returncode == 0, server_out
    assert all(s.returncode == 0 for s in sites), site_outs
    rounds = json.loads((tmp_path / "report" / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2] and all(sorted(r["sites"]) == sorted(HOSPITALS) for r in rounds)
    for (kit, rows), out in zip(HOSPITALS.items(), site_outs, strict=True):
        assert f"its data named {rows!r}" in out
        models = tmp_path / "fed" / "sites" / kit / "models" / "heart-disease"
        kept = models / json.loads((models / "latest.json").read_text())["run"]
        assert 0.0 <= json.loads((kept / "own-test.json").read_text())["global"]["accuracy"] <= 1.0


def test_a_site_whose_rows_the_table_lacks_is_refused_naming_them(tmp_path: Path) -> None:
    if not TABLE.is_file():
        pytest.skip(f"the heart-disease table is not at {TABLE}")
    from confide.config import load_job
    from confide.errors import DataError
    from confide.job_plan import site_task

    job = load_job(ROOT / "jobs" / "heart_disease.yaml")

    with pytest.raises(DataError, match="va-long-beach"):
        site_task(job, TABLE, "va-long-beach", job.privacy, print)  # the certificate's name, not the table's value
