"""A site runs a job only when its operator approved it: --approve, or the job's digest listed in the kit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from confide.config import parse_job
from confide.errors import ConfigError
from confide.privacy.config import PrivacyConfig
from confide.site.consent import APPROVED_JOBS, Approval, add_approval, approval_line, job_digest, read_approvals
from confide.site.job_view import describe_job
from confide.transport.grpc_client import JobDeclined
from tests.site import deployed

JOB: dict[str, Any] = {
    "name": "heart",
    "task": {"name": "table", "target": "num", "features": ["age"], "model": "mlp", "hidden": 8},
    "data": {"root": "data.csv"},
    "federation": {"rounds": 3, "local_steps": 5},
    "privacy": {"filters": [{"type": "gaussian", "clip": 1.0, "noise_multiplier": 0.8}]},
}


def _changed(document: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(document))
    inner = copy
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = value
    return copy


def test_the_digest_is_stable_for_the_same_job_and_changes_with_any_field() -> None:
    reordered = {key: JOB[key] for key in reversed(list(JOB))}
    changes = [
        (("federation", "rounds"), 4),
        (("task", "hidden"), 16),
        (("privacy", "filters"), []),
        (("data", "root"), "other.csv"),
        (("name",), "heart2"),
    ]

    digests = [job_digest(_changed(JOB, path, value)) for path, value in changes]

    assert job_digest(JOB) == job_digest(reordered) == job_digest(json.loads(json.dumps(JOB)))
    assert len(job_digest(JOB)) == 64
    assert job_digest(JOB) not in digests and len(set(digests)) == len(digests)


def test_the_kits_list_is_read_with_comments_and_a_bad_line_is_named(tmp_path: Path) -> None:
    digest = job_digest(JOB)
    (tmp_path / APPROVED_JOBS).write_text(f"# approved jobs\n\n{digest.upper()}  # heart, by the DPO\n")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / APPROVED_JOBS).write_text(f"{digest}\nnot-a-digest # oops\n")

    listed = read_approvals(tmp_path)

    assert listed == {digest: "heart, by the DPO"}
    assert read_approvals(tmp_path / "nowhere") == {}
    with pytest.raises(ConfigError, match=r"approved_jobs.txt, line 2: expected a job digest .*not-a-digest"):
        read_approvals(bad)


def test_approve_or_a_listed_digest_approves_and_a_changed_job_needs_approval_again(tmp_path: Path) -> None:
    (tmp_path / APPROVED_JOBS).write_text(approval_line(job_digest(JOB), "heart") + "\n")
    changed = _changed(JOB, ("federation", "rounds"), 30)

    listed = Approval.of_kit(tmp_path).decide("heart", JOB)
    again = Approval.of_kit(tmp_path).decide("heart", changed)
    by_flag = Approval.of_kit(tmp_path, approve=True).decide("heart", changed)
    unknown = Approval.of_kit(tmp_path / "empty").decide("heart", JOB)

    assert listed.approved and "listed in" in listed.how
    assert not again.approved and "approved before with digest" in again.how and again.digest != listed.digest
    assert by_flag.approved and "--approve" in by_flag.how
    assert not unknown.approved and "--approve not given" in unknown.how
    assert again.digest in again.refusal and "not approved" in again.refusal


def test_the_operator_sees_the_job_and_how_to_approve_it(tmp_path: Path) -> None:
    job = parse_job(JOB)
    policy = PrivacyConfig.model_validate(
        {"filters": [{"type": "gaussian", "clip": 0.5, "noise_multiplier": 1.5}], "budget": {"epsilon": 4}}
    )
    said: list[str] = []

    consent = Approval(tmp_path, again="confide site --kit K --data D --approve").ask(
        JOB, describe_job(job, policy, tmp_path / "privacy.yaml"), said.append
    )

    text = "\n".join(said)
    assert not consent.approved
    assert "job 'heart'" in text and "    hidden: 8" in text and "    target: num" in text
    assert "rounds: 3, local steps: 5 a round, strategy: fedavg" in text
    assert "privacy the job asks: gaussian (clip 1, noise multiplier 0.8" in text
    assert "privacy this site runs (the job made stricter by" in text and "noise multiplier 1.5" in text
    assert "budget epsilon 4" in text and "charged to this site's ledger" in text
    assert f"job digest (SHA-256): {consent.digest}" in text
    assert "confide site --kit K --data D --approve" in text and f"    {consent.digest}  # heart, approved" in text
    assert consent.kept is not None and json.loads(consent.kept.read_text()) == JOB


class _Operator:
    """Answers the site's questions in turn, and keeps them."""

    def __init__(self, *answers: str | type[BaseException], log: list[str] | None = None) -> None:
        self.answers = list(answers)
        self.asked: list[str] = [] if log is None else log

    def __call__(self, question: str) -> str:
        self.asked.append(question)
        answer = self.answers.pop(0)
        if isinstance(answer, type):
            raise answer()
        return answer


def test_at_a_terminal_the_operator_approves_the_job_shown_and_may_list_it_for_next_time(tmp_path: Path) -> None:
    shown = describe_job(parse_job(JOB), PrivacyConfig(), None)
    said: list[str] = []
    operator = _Operator(" Y ", "yes", log=said)  # what the site says and asks, in order

    consent = Approval.of_kit(tmp_path, prompt=operator).ask(JOB, shown, said.append)

    assert consent.approved and consent.how == "approved by the operator at the prompt"
    question = said.index("Run this job on this site's data now? [y/N] ")
    assert said.index(shown[-1]) < question and f"job digest (SHA-256): {consent.digest}" in said[question - 2]
    assert "NOT APPROVED" not in "\n".join(said)
    assert read_approvals(tmp_path) == {consent.digest: f"heart, approved {consent_day(tmp_path)}"}
    again = Approval.of_kit(tmp_path, prompt=_Operator()).ask(JOB, shown, said.append)  # asks nothing now
    assert again.approved and "listed in" in again.how


def consent_day(kit: Path) -> str:
    return (kit / APPROVED_JOBS).read_text().split("approved ")[-1].strip()


@pytest.mark.parametrize("answers", [("n",), ("",), ("maybe",), (EOFError,), (KeyboardInterrupt,)])
def test_any_answer_but_yes_at_the_prompt_declines_and_lists_nothing(
    tmp_path: Path, answers: tuple[str | type[BaseException], ...]
) -> None:
    said: list[str] = []

    consent = Approval.of_kit(tmp_path, prompt=_Operator(*answers)).ask(JOB, ["job 'heart'"], said.append)

    assert not consent.approved and consent.how == "the operator declined it at the prompt"
    assert "NOT APPROVED: the operator declined it at the prompt." in said
    assert not (tmp_path / APPROVED_JOBS).exists()


def test_an_approval_is_appended_to_a_list_without_a_final_newline(tmp_path: Path) -> None:
    (tmp_path / APPROVED_JOBS).write_text(f"{'a' * 64}  # older job")

    line = add_approval(tmp_path, job_digest(JOB), "heart")

    assert (tmp_path / APPROVED_JOBS).read_text() == f"{'a' * 64}  # older job\n{line}\n"
    assert set(read_approvals(tmp_path)) == {"a" * 64, job_digest(JOB)}


def test_a_site_without_approval_declines_and_the_round_goes_on_with_its_reason(tmp_path: Path) -> None:
    """site-1's operator approves at the prompt, site-2 lists the job's digest, site-3 lists only an earlier version
    of the job (one local step less): a changed job needs approval again. Its refusal is its last word: the server
    stops counting it at once, so round 2 neither asks it nor waits out its silence."""
    kits = deployed.federation(tmp_path / "kits")
    job = deployed.job(tmp_path, rounds=2)
    earlier = deployed.job(tmp_path, federation={"rounds": 2, "local_steps": 2, "min_sites": 2, "start_sites": 3})
    digest = job_digest(json.loads(job.model_dump_json()))  # the job as the server sends it
    before = job_digest(json.loads(earlier.model_dump_json()))
    site_2, site_3 = kits / "sites" / "site-2", kits / "sites" / "site-3"
    (site_2 / APPROVED_JOBS).write_text(approval_line(digest, job.name) + "\n")
    (site_3 / APPROVED_JOBS).write_text(approval_line(before, job.name) + "\n")
    approvals = {
        "site-1": Approval.of_kit(kits / "sites" / "site-1", prompt=_Operator("y", "n")),  # --approve: unit-tested
        "site-2": Approval.of_kit(site_2),
        "site-3": Approval.of_kit(site_3, again="confide site ... --approve"),
    }

    result, sites = deployed.run(kits, job, approvals=approvals)

    assert "error" not in result, result.get("error")
    assert sites["site-1"].outcome == [2] and sites["site-2"].outcome == [2]
    declined = sites["site-3"].outcome[0]
    assert isinstance(declined, JobDeclined) and "the server was told in round 1" in str(declined)
    assert sites["site-3"].built == []  # no runner: its data never read, nothing trained
    first, second = deployed.rounds(tmp_path)
    assert sorted(first["sites"]) == ["site-1", "site-2"]
    assert sorted(second["sites"]) == ["site-1", "site-2"] and "site-3" not in second["failures"]
    assert "site-3 refused" in first["failures"]["site-3"] and digest in first["failures"]["site-3"]
    assert "declined job 'consent-test': not approved" in first["failures"]["site-3"]
    trail = (tmp_path / "report" / "server.log").read_text()
    assert "site site-3 refused: site site-3 declined job" in trail
    assert "site site-3 declined the job and left" in trail
    said = "\n".join(sites["site-3"].said)
    assert "NOT APPROVED" in said and "approved before with digest" in said
    assert f"{digest}  # consent-test, approved" in said and "confide site ... --approve" in said
    assert "approved: listed in" in "\n".join(sites["site-2"].said)
    assert "approved by the operator at the prompt: this site takes part" in sites["site-1"].said
    assert not (kits / "sites" / "site-1" / APPROVED_JOBS).exists()  # "n" to listing it
    assert (site_3 / "audit" / "jobs" / f"{digest}.json").is_file()  # what it declined, kept for its auditor
    assert not (site_3 / "audit" / "releases.jsonl").exists()  # it released nothing
