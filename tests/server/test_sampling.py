"""Sampling a fraction of the sites each round (federation.fraction): who trains, what they are told, what their
ledgers record."""

from __future__ import annotations

import numpy as np
import pytest

from confide import job_plan, serde
from confide.config import FederationConfig, parse_job
from confide.errors import ConfigError
from confide.privacy.filter import FilterChain
from confide.privacy.gaussian import GaussianClientDP
from confide.privacy.ledger import Ledger
from confide.records import Arrays, Config, EvalRes, Failure, TrainIns, TrainRes
from confide.server.loop import LoopConfig, ServerLoop
from confide.server.sampling import RATE_KEY, sample_sites, sample_size
from confide.sim import simulate
from confide.site.runner import SiteRunner
from confide.strategies import FedAvg
from confide.transport.inmemory import InMemoryTransport
from tests.helpers import QuadraticTask, arrays

SITES = [f"s{i}" for i in range(10)]


class Told(QuadraticTask):
    """Records the config of every instruction it trains on, and every evaluation."""

    def __init__(self) -> None:
        super().__init__(arrays(w=[1.0, 1.0]), examples=5)
        self.configs: list[Config] = []
        self.evaluated: list[int] = []

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        self.configs.append(dict(config))
        return super().train(arrays, config, round)

    def evaluate(self, arrays: Arrays, config: Config, round: int) -> EvalRes:
        self.evaluated.append(round)
        return super().evaluate(arrays, config, round)


def test_the_sample_is_the_fraction_drawn_from_the_seed_and_the_round() -> None:
    first = sample_sites(SITES, 0.3, 1, seed=7, round=1)

    again = sample_sites(list(reversed(SITES)), 0.3, 1, seed=7, round=1)
    later = [sample_sites(SITES, 0.3, 1, seed=7, round=r) for r in range(2, 8)]
    other_seed = [sample_sites(SITES, 0.3, 1, seed=8, round=r) for r in range(1, 8)]

    assert len(first) == 3 and set(first) <= set(SITES) and first == sorted(first)
    assert again == first  # the order sites joined in changes nothing
    assert any(s != first for s in later)  # each round draws afresh
    assert [first, *later] != other_seed


def test_the_sample_holds_at_least_the_quorum_and_fraction_one_keeps_every_site_in_order() -> None:
    assert sample_size(1000, 0.1, 1) == 100  # not 101: 0.1 * 1000 is a hair above 100 in floating point
    assert sample_size(10, 0.01, 1) == 1
    assert sample_size(10, 0.1, 4) == 4
    assert sample_sites(SITES[::-1], 1.0, 1, seed=0, round=3) == SITES[::-1]


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan"), True])
def test_a_fraction_outside_zero_to_one_is_refused_naming_it(bad: float) -> None:
    with pytest.raises(ConfigError, match=r"federation\.fraction"):
        sample_sites(SITES, bad, 1, seed=0, round=1)
    with pytest.raises(ConfigError, match=r"federation\.fraction"):
        ServerLoop(FedAvg(), InMemoryTransport({}), arrays(w=[0.0]), LoopConfig(rounds=1, fraction=bad))


@pytest.mark.parametrize("bad", [0, 1.01, -1])
def test_the_job_file_refuses_a_fraction_outside_zero_to_one(bad: float) -> None:
    with pytest.raises(ConfigError, match="fraction"):
        parse_job({"data": {"root": "."}, "federation": {"fraction": bad}})


def test_cyclic_refuses_a_fraction() -> None:
    with pytest.raises(ValueError, match="cyclic already trains one site per round"):
        FederationConfig(strategy="cyclic", fraction=0.5)


def test_the_loop_trains_the_seeded_sample_and_tells_each_sampled_site_the_rate() -> None:
    tasks = {name: Told() for name in SITES}

    result = simulate(FedAvg(), tasks, arrays(w=[0.0, 0.0]), LoopConfig(rounds=4, fraction=0.3, sample_seed=11))

    for rnd in result.history.rounds:
        assert list(rnd.sites) == sample_sites(SITES, 0.3, 1, seed=11, round=rnd.round)
    trained = {name: len(task.configs) for name, task in tasks.items()}
    assert sum(trained.values()) == 4 * 3
    told = {config[RATE_KEY] for task in tasks.values() for config in task.configs}
    assert told == {0.3}


def test_without_sampling_the_instruction_is_unchanged() -> None:
    tasks = {name: Told() for name in SITES[:3]}

    simulate(FedAvg({"lr": 0.5}), tasks, arrays(w=[0.0, 0.0]), LoopConfig(rounds=1))

    assert [task.configs for task in tasks.values()] == [[{"lr": 0.5}]] * 3


def test_federated_evaluation_under_sampling_asks_the_round_s_sample() -> None:
    tasks = {name: Told() for name in SITES}

    result = simulate(
        FedAvg(), tasks, arrays(w=[0.0, 0.0]), LoopConfig(rounds=2, fraction=0.2, evaluate_every=1, sample_seed=3)
    )

    for rnd in result.history.rounds:
        assert sorted(rnd.eval_metrics) == sorted(rnd.sites)
        assert all(rnd.round in tasks[site].evaluated for site in rnd.sites)


def _private_site(name: str) -> SiteRunner:
    chain = FilterChain([GaussianClientDP(clip=1.0, noise_multiplier=1.0, sites=1)])
    return SiteRunner(name, QuadraticTask(arrays(w=[1.0, 1.0]), 5), chain=chain, ledger=Ledger(site=name))


def _train(runner: SiteRunner, config: Config) -> object:
    ins = TrainIns(round=1, arrays=arrays(w=[0.0, 0.0]), config=config)
    return serde.decode(runner.handle(serde.encode(ins)))


def test_the_ledger_records_the_told_rate_and_claims_no_amplification_from_it() -> None:
    sampled, whole = _private_site("a"), _private_site("b")

    _train(sampled, {"lr": 0.5, RATE_KEY: 0.01})
    _train(whole, {"lr": 0.5})

    assert sampled.ledger is not None and whole.ledger is not None
    (entry,) = sampled.ledger.entries
    assert entry.params[RATE_KEY] == 0.01
    assert entry.params["site_sampling_amplification"] == "none"
    assert entry.params["sampling_rate"] == 1.0  # what the accountant composes: no subsampling of sites
    assert RATE_KEY not in whole.ledger.entries[0].params
    assert np.isclose(sampled.ledger.epsilon, whole.ledger.epsilon)  # a rate of 0.01 bought no epsilon


@pytest.mark.parametrize("bad", [0.0, 1.5, "half"])
def test_a_site_refuses_an_impossible_rate(bad: object) -> None:
    runner = _private_site("a")

    answer = _train(runner, {"lr": 0.5, RATE_KEY: bad})

    assert isinstance(answer, Failure) and answer.kind == "refused" and RATE_KEY in answer.reason
    assert runner.ledger is not None and runner.ledger.entries == []


@pytest.mark.parametrize("deployed", [False, True])
def test_the_simulator_and_the_deployment_sample_alike(deployed: bool) -> None:
    job = parse_job({"seed": 9, "data": {"root": "."}, "federation": {"fraction": 0.25, "min_sites": 2}})

    settings = job_plan.loop_settings(job, sites=8, secure=None, deployed=deployed)

    assert (settings.fraction, settings.sample_seed, settings.min_sites) == (0.25, 9, 2)
