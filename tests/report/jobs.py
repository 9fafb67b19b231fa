"""A job's result made by hand, for the report's tests: two sites (one with a small test split and dropped rows),
a federated model and a local-only one, with or without a privacy ledger. Nothing is trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confide.config import parse_job
from confide.experiment import JobResult, ModelRun
from confide.privacy.ledger import Ledger
from confide.privacy.spend import Spend
from confide.records import Skipped
from confide.workloads.base import SiteSplit

SIZES = {"Cleveland": (203, 101), "Hungary": (173, 15)}  # Hungary's test split is small
SKIPPED = (
    Skipped("line 7", "no value for chol"),
    Skipped("line 9", "no value for chol"),
    Skipped("line 12", "no value for fbs"),
    Skipped("4 more rows", "no value for chol"),  # a capped list's last item counts the rest
)
DP_SGD = Spend("dp-sgd", {"clip": 1.0}, noise_multiplier=2.0, sampling_rate=0.1, steps=5)


def _scores(cleveland: float, hungary: float) -> dict[str, dict[str, float]]:
    return {
        "Cleveland": {"accuracy": cleveland, "cases": 101.0},
        "Hungary": {"accuracy": hungary, "cases": 15.0},
        "all": {
            "accuracy": (cleveland + hungary) / 2,
            "accuracy_sd": abs(cleveland - hungary) / 2,
            "accuracy_sites": 2.0,
            "cases": 116.0,
        },
    }


def job_result(out: Path, privacy: dict[str, Any] | None = None, rounds: int = 3) -> JobResult:
    """The result of a job of ``rounds`` rounds whose report goes to ``out``; ``privacy``: the job's privacy
    section (with dp_sgd: each site's ledger charged DP-SGD every round)."""
    job = parse_job(
        {
            "name": "trust-check",
            "seed": 7,
            "data": {"root": str(out / "data")},
            "federation": {"rounds": rounds, "local_steps": 2, "min_sites": 2},
            "privacy": privacy or {},
            "report": {"out": str(out)},
        }
    )
    federated = ModelRun(name="fedavg", kind="federated", sites=tuple(SIZES))
    federated.curve = [{"round": float(r), "loss": 0.7 - 0.1 * r, "accuracy": 0.6 + 0.05 * r} for r in range(1, 4)]
    local = ModelRun(name="local:Hungary", kind="local", sites=("Hungary",))
    local.curve = [{"round": float(r), "loss": 0.6, "accuracy": 0.6} for r in range(1, 4)]
    if privacy and "dp_sgd" in privacy:
        budget = privacy.get("budget", {})
        for site in SIZES:
            ledger = Ledger(site=site, delta=budget.get("delta", 1e-5), budget=budget.get("epsilon"))
            for r in range(1, rounds + 1):
                ledger.record(r, [DP_SGD], job="trust-check")
            federated.ledgers[site] = ledger
    return JobResult(
        job=job,
        sites=(
            SiteSplit("Cleveland", None, None, (), ("train 203 (46% positive), test 101 (46% positive)",)),
            SiteSplit("Hungary", None, None, SKIPPED, ("train 173 (38% positive), test 15 (40% positive)",)),
        ),
        sizes=SIZES,
        runs=(local, federated),
        cross={"local:Hungary": _scores(0.55, 0.8), "fedavg": _scores(0.84, 0.533)},
        seconds={"data": 0.5, "total": 9.5},
        metric="accuracy",
        metric_keys=("accuracy",),
        description="clinical table, binary classification of 'num'",
    )
