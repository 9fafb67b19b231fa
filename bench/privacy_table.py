"""The heart-disease half of bench/privacy_utility.py: the four-hospital UCI table, one hospital per site.

Each configuration runs FedAvg on a logistic model for several seeds (the split and the training differ per seed);
the metric is test accuracy per hospital, averaged over the four.

Under differential privacy a site does not send its number of training rows (it is data), so FedAvg weighs the
hospitals equally; without privacy it weighs them by rows. The row "no privacy, equal weights" separates the two
effects: the cost of DP is read against it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from confide.config import DataConfig
from confide.kinds.tables.config import TableTaskConfig
from confide.kinds.tables.table import HEART_CATEGORICAL, HEART_FEATURES
from confide.privacy.build import site_chain, site_ledger
from confide.privacy.config import DpSgdSpec, PrivacyConfig
from confide.privacy.ledger import noise_multiplier_for
from confide.records import Arrays, Config, EvalRes, TrainRes
from confide.server.loop import LoopConfig
from confide.sim import simulate
from confide.strategies import make_strategy
from confide.workloads.base import SiteSplit
from confide.workloads.kind import KindWorkload, TorchSiteTask
from confide.workloads.registry import make_workload

ROUNDS, STEPS, BATCH = 30, 5, 8
HEART = TableTaskConfig(  # the UCI table as kinds/tables/table.py's heart_disease reads it, a linear model
    site_column="dataset", target="num", positive_above=0, features=HEART_FEATURES, categorical=HEART_CATEGORICAL
)
TEST_FRACTION = 1.0 - 2 / 3  # two thirds of each hospital train
DP_FAMILIES = ("svt", "client-dp", "dp-sgd")
NOMINAL = 10.0
"""Above this epsilon a configuration is flagged: nominal DP, no meaningful protection."""


def protection(family: str, epsilon: float) -> str:
    """What a row's guarantee is worth, in words."""
    if family not in DP_FAMILIES:
        return "not DP"
    return "nominal, no meaningful protection" if epsilon > NOMINAL else f"DP (epsilon <= {NOMINAL:g})"


def table_configurations() -> list[tuple[str, str, dict[str, Any]]]:
    runs: list[tuple[str, str, dict[str, Any]]] = [
        ("no privacy", "none", {}),
        ("no privacy, equal weights", "equal", {}),
    ]
    for fraction in (0.1, 0.25, 0.4, 0.6):
        runs.append(
            (f"share {fraction:.0%}", "share:reported", {"filters": [{"type": "sparsify", "fraction": fraction}]})
        )
    for epsilon in (1.0, 10.0, 100.0):
        svt = {"type": "svt", "epsilon": epsilon, "fraction": 0.25, "clip": 0.05}
        runs.append((f"SVT eps {epsilon:g}/round", "svt", {"filters": [svt]}))
    for z in (0.3, 1.0):
        runs.append(
            (f"client DP z={z:g}", "client-dp", {"filters": [{"type": "gaussian", "clip": 0.5, "noise_multiplier": z}]})
        )
    for epsilon in (1.0, 3.0, 10.0):  # each hospital plans its own noise for its own size (see site_dp_sgd)
        runs.append((f"DP-SGD eps {epsilon:g}", "dp-sgd", {"budget": {"epsilon": epsilon * 1.01}, "plan": epsilon}))
    return runs


class EqualWeight:
    """A site that reports one example, as a site under DP does: FedAvg then weighs every hospital the same."""

    def __init__(self, task: TorchSiteTask) -> None:
        self.task = task

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        return replace(self.task.train(arrays, config, round), num_examples=1)

    def evaluate(self, arrays: Arrays, config: Config, round: int) -> EvalRes:
        return self.task.evaluate(arrays, config, round)


def site_dp_sgd(epsilon: float, rows: int) -> DpSgdSpec:
    """The DP-SGD a hospital of ``rows`` training rows runs to spend ``epsilon`` (delta 1e-5) over the whole job:
    a small hospital samples a larger share of its rows per step, so it needs more noise."""
    sigma = noise_multiplier_for(epsilon, 1e-5, sampling_rate=min(1.0, BATCH / rows), steps=ROUNDS * STEPS)
    return DpSgdSpec(noise_multiplier=round(sigma + 5e-5, 4), clip=1.0)


def heart_sites(path: Path, seed: int) -> tuple[KindWorkload, list[SiteSplit]]:
    """The table task's workload and its four hospitals, split by ``seed``, as a job reads them."""
    workload = make_workload(HEART)
    assert isinstance(workload, KindWorkload)
    return workload, workload.load_sites(DataConfig(root=path, test_fraction=TEST_FRACTION), seed, lambda _: None)


def run_table(path: Path, seeds: int, only: str = "") -> list[dict[str, Any]]:
    _, first = heart_sites(path, 0)
    rows = []
    print(f"\nheart disease ({', '.join(s.name for s in first)}), logistic model, {seeds} seeds")
    print(f"{'configuration':<32} {'accuracy (mean of 4)':>21} {'spread':>7} {'epsilon':>9}  protection")
    for label, family, section in table_configurations():
        if only and only not in label and family not in ("none", "equal"):
            continue
        plan = section.pop("plan", None)
        privacy = PrivacyConfig.model_validate(
            {**section, **({"dp_sgd": {"noise_multiplier": 1, "clip": 1}} if plan else {})}
        )
        accuracies, epsilons = [], []
        for seed in range(seeds):
            workload, splits = heart_sites(path, seed)
            tests = {s.name: s.test for s in splits}
            tasks = {
                s.name: workload.task(
                    s.train,
                    s.test,
                    site=s.name,
                    seed=seed,
                    dp_sgd=site_dp_sgd(plan, len(s.train)) if plan else None,
                )
                for s in splits
            }
            ledgers = {site: site_ledger(privacy, site, None) for site in tasks}
            sites: dict[str, Any] = {s: EqualWeight(t) for s, t in tasks.items()} if family == "equal" else tasks
            result = simulate(
                make_strategy(
                    "fedavg", {"local_steps": STEPS, "lr": 0.05, "batch_size": BATCH}, privacy=privacy, seed=seed
                ),
                sites,
                workload.initial(seed),
                LoopConfig(rounds=ROUNDS, min_sites=len(tasks)),
                chains={site: site_chain(privacy, len(tasks)) for site in tasks},
                ledgers=ledgers,
            )
            scores = [task.score(result.arrays, tests[site])["accuracy"] for site, task in tasks.items()]
            accuracies.append(float(np.mean(scores)))
            epsilons.append(max((ledger.epsilon for ledger in ledgers.values() if ledger is not None), default=0.0))
        row = {
            "label": label,
            "family": family,
            "accuracy": float(np.mean(accuracies)),
            "spread": float(np.std(accuracies)),
            "epsilon": float(np.max(epsilons)),
            "fraction": next((f["fraction"] for f in section.get("filters", []) if f["type"] == "sparsify"), 1.0),
        }
        rows.append(row)
        eps = f"{row['epsilon']:.3g}" if family in DP_FAMILIES else "-"
        shown = f"{label:<32} {row['accuracy']:>21.3f} {row['spread']:>7.3f} {eps:>9}"
        print(f"{shown}  {protection(family, row['epsilon'])}", flush=True)
    return rows
