"""Client-level Gaussian DP, DP-FedAvg and the ledger's accounting."""

from __future__ import annotations

import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp

from confide.privacy.gaussian import GaussianClientDP, l2_norm
from confide.privacy.ledger import Ledger
from confide.privacy.spend import Spend
from confide.records import Arrays, TrainRes
from confide.strategies.dp_fedavg import DPFedAvg
from tests.helpers import arrays


def _rdp(event: dp_accounting.DpEvent, delta: float = 1e-5) -> float:
    accountant = rdp.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def _pld(event: dp_accounting.DpEvent, delta: float = 1e-5) -> float:
    accountant = pld.PLDAccountant(value_discretization_interval=1e-2)  # pessimistic: an upper bound
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def _res(update: Arrays) -> TrainRes:
    return TrainRes(round=1, update=update, num_examples=10)


def test_gaussian_filter_clips_to_the_norm_and_adds_its_share_of_the_noise() -> None:
    update = Arrays.from_dict({"w": np.full(200_000, 0.01, np.float32)})  # norm 4.47
    dp = GaussianClientDP(clip=1.0, noise_multiplier=2.0, sites=4)

    clipped_only = GaussianClientDP(clip=1.0, noise_multiplier=2.0, sites=4, placement="server")
    assert l2_norm(clipped_only.apply(_res(update), np.random.default_rng(0)).update) == pytest.approx(1.0, rel=1e-4)
    noised = dp.apply(_res(update), np.random.default_rng(0)).update
    noise = noised["w"] - np.full(200_000, 0.01 / math.sqrt(200_000 * 1e-4), np.float32)  # minus the clipped update
    assert float(np.std(noise)) == pytest.approx(2.0 * 1.0 / math.sqrt(4), rel=0.01)  # z S / sqrt(n)


def test_what_protects_a_site_depends_on_what_the_server_sees() -> None:
    assert GaussianClientDP(1.0, 2.0, sites=4).spend().noise_multiplier == pytest.approx(1.0)  # z / sqrt(n)
    secure = GaussianClientDP(1.0, 2.0, sites=4, secure_aggregation=True)
    assert secure.spend(contributors=4).noise_multiplier == 2.0  # every unmaskable sum holds 4 shares: z
    assert secure.spend(contributors=3).noise_multiplier == pytest.approx(2.0 * math.sqrt(3 / 4))  # 3 shares
    assert secure.spend().noise_multiplier == pytest.approx(1.0)  # no threshold known: as if seen alone
    assert GaussianClientDP(1.0, 2.0, sites=4, placement="server").spend().noise_multiplier == 2.0


def test_the_ledger_composes_gaussian_rounds_with_the_rdp_accountant() -> None:
    ledger = Ledger("site-1", delta=1e-5)
    for rnd in range(1, 11):
        ledger.record(rnd, [Spend("gaussian-site", noise_multiplier=1.1, steps=1)])

    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.1), 10)
    assert ledger.epsilon == pytest.approx(min(_rdp(event), _pld(event)), rel=1e-9)
    per_round = ledger.entries[0].epsilon_total
    assert ledger.epsilon < 10 * per_round / 2  # far tighter than summing the per-round epsilons


def test_subsampled_steps_and_pure_epsilon_add_up_as_documented() -> None:
    ledger = Ledger("site-1", delta=1e-5)
    ledger.record(1, [Spend("dp-sgd", noise_multiplier=1.0, sampling_rate=0.01, steps=100), Spend("svt", epsilon=0.5)])

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.0)), 100
    )
    assert _pld(event) < 0.8 * _rdp(event)  # PLD is far tighter here: the ledger takes it
    assert ledger.epsilon == pytest.approx(min(_rdp(event), _pld(event)) + 0.5, rel=1e-9)
    assert [e.mechanism for e in ledger.entries] == ["dp-sgd", "svt"]
    assert ledger.entries[1].epsilon_round == pytest.approx(0.5)


def test_a_round_over_budget_is_refused_before_it_runs(tmp_path: Path) -> None:
    ledger = Ledger("site-1", delta=1e-5, budget=3.0, path=tmp_path / "l.json")
    spend = [Spend("gaussian-site", noise_multiplier=3.0, steps=1)]
    rounds = 0
    while ledger.refusal(spend) is None:
        rounds += 1
        ledger.record(rounds, spend)

    assert rounds >= 3 and ledger.epsilon <= 3.0 < ledger.after(spend)
    assert "over the budget of 3" in str(ledger.refusal(spend))
    again = Ledger.open("site-1", tmp_path / "l.json", delta=1e-5, budget=3.0)  # a restarted site keeps counting
    assert again.epsilon == pytest.approx(ledger.epsilon) and len(again.entries) == rounds
    stricter = Ledger.open("site-1", tmp_path / "l.json", delta=1e-6, budget=3.0)  # a smaller delta: same spends
    assert stricter.epsilon > ledger.epsilon and len(stricter.entries) == rounds


def test_dp_fedavg_weighs_sites_equally_and_adds_central_noise_to_the_sum() -> None:
    updates = [("a", TrainRes(1, arrays(w=[1.0, 0.0]), 1)), ("b", TrainRes(1, arrays(w=[0.0, 1.0]), 1000))]
    plain = DPFedAvg(clip=10.0, noise_multiplier=1e-9, placement="site").aggregate(
        1, arrays(w=[0.0, 0.0]), iter(updates)
    )
    np.testing.assert_allclose(plain.arrays["w"], [0.5, 0.5])  # not weighted by the 1000 examples

    n = 1_000_000  # the noise is secret, so unseeded: enough coordinates that its mean lies far inside the bound
    big = Arrays.from_dict({"w": np.zeros(n, np.float32)})
    central = DPFedAvg(clip=2.0, noise_multiplier=3.0, placement="server")
    results = [(s, TrainRes(1, Arrays.from_dict({"w": np.full(n, 5.0, np.float32)}), 1)) for s in "abcd"]
    agg = central.aggregate(1, big, iter(results))
    clipped_each = 2.0 / math.sqrt(n)  # every update re-clipped to norm 2 by the server (unclipped: 5.0)
    noise_of_the_mean = 3.0 * 2.0 / 4 / math.sqrt(n)  # 0.0015: the bound below is 8 of these
    assert float(np.mean(agg.arrays["w"])) == pytest.approx(clipped_each, abs=8 * noise_of_the_mean)
    assert float(np.std(agg.arrays["w"])) == pytest.approx(3.0 * 2.0 / 4, rel=0.02)  # z S on the sum, over 4


def test_central_noise_cannot_be_regenerated_by_a_site_that_knows_the_job() -> None:
    """Issue 10: with the noise seeded from the job, a site re-ran the server's strategy, removed the noise from the
    new model and, knowing its own update, recovered the other site's. Now two servers from one job differ."""
    # 16 coordinates, not 2: the two servers' noises differ by N(0, 0.71^2) per coordinate (std 1 on the sum of two,
    # halved, times sqrt 2), under 1e-3 with probability 1.1e-3; all of 2 by chance: 1e-6, all of 16: 1e-47
    start = Arrays.from_dict({"w": np.zeros(16, np.float32)})
    update = Arrays.from_dict({"w": np.linspace(-0.2, 0.3, 16, dtype=np.float32)})
    results = [("a", TrainRes(1, update, 1)), ("b", TrainRes(1, Arrays.from_dict({"w": -update["w"]}), 1))]
    server = DPFedAvg(clip=1.0, noise_multiplier=1.0, placement="server")
    replay = DPFedAvg(clip=1.0, noise_multiplier=1.0, placement="server")  # the attacker's copy of the job
    replay.restore(server.state())

    seen = server.aggregate(1, start, iter(results)).arrays["w"]
    guess = replay.aggregate(1, start, iter(results)).arrays["w"]

    assert float(np.abs(seen - guess).max()) > 1e-3
    assert server.state().scalars == {}  # no noise state in the checkpoint


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"clip": 0.0}, "clip"), ({"noise_multiplier": float("nan")}, "noise_multiplier"), ({"sites": 0}, "sites")],
)
def test_bad_gaussian_arguments_are_refused(kwargs: dict[str, float], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        GaussianClientDP(**{"clip": 1.0, "noise_multiplier": 1.0, "sites": 2, **kwargs})  # type: ignore[arg-type]


def test_central_noise_leaves_integer_arrays_alone() -> None:
    start = Arrays.from_dict({"w": np.zeros(1000, np.float32), "count": np.array([5], np.int64)})
    update = Arrays.from_dict({"w": np.full(1000, 0.01, np.float32), "count": np.array([3], np.int64)})
    central = DPFedAvg(clip=1.0, noise_multiplier=2.0, placement="server")

    agg = central.aggregate(1, start, iter([("a", TrainRes(1, update, 1)), ("b", TrainRes(1, update, 1))]))

    assert agg.arrays["count"].dtype == np.int64 and int(agg.arrays["count"][0]) == 5  # no change, no noise
    assert float(np.std(agg.arrays["w"])) > 0.5  # the float arrays are noised
