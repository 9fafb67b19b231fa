from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from confide.config import parse_job
from confide.errors import ConfideError, ConfigError
from confide.privacy.config import PrivacyConfig
from confide.records import Arrays, SparseArrays, TrainRes, Update
from confide.server.loop import LoopConfig
from confide.sim import simulate
from confide.strategies import FedOpt, make_strategy
from confide.strategies.base import StrategyState
from confide.strategies.fedavg import Missing
from confide.strategies.fedopt import DEFAULT_SERVER_LR, Variant, server_lr_for
from tests.helpers import QuadraticTask, arrays


def _results(round: int, *sent: tuple[str, Update, int]) -> Iterator[tuple[str, TrainRes]]:
    return iter([(site, TrainRes(round=round, update=update, num_examples=n)) for site, update, n in sent])


def _moment(strategy: FedOpt, key: str) -> np.ndarray:
    return np.array(strategy.state().arrays[key])  # a copy: the state shows the live moments


# eta = 0.1, beta1 = beta2 = 0.5, tau = 0.5, so v starts at tau^2 = 0.25 and m at 0; x starts at 1.
# Round 1: a sends +1.0 on 3 examples, b sends 0.0 on 1: delta1 = (3 * 1.0 + 0) / 4 = 0.75, delta1^2 = 0.5625.
# Round 2: a sends +0.5 on 1 example, b sends 0.0 on 1: delta2 = 0.25, delta2^2 = 0.0625.
# m is the same for every variant: m1 = 0.5 * 0 + 0.5 * 0.75 = 0.375; m2 = 0.5 * 0.375 + 0.5 * 0.25 = 0.3125.
# adagrad: v1 = 0.25 + 0.5625 = 0.8125, sqrt 0.90138782, x1 = 1 + 0.1 * 0.375 / 1.40138782 = 1.02675919;
#          v2 = 0.8125 + 0.0625 = 0.875, sqrt 0.93541435, x2 = x1 + 0.1 * 0.3125 / 1.43541435 = 1.04852991.
# adam:    v1 = 0.5 * 0.25 + 0.5 * 0.5625 = 0.40625, sqrt 0.63737744, x1 = 1 + 0.0375 / 1.13737744 = 1.03297059;
#          v2 = 0.5 * 0.40625 + 0.5 * 0.0625 = 0.234375, sqrt 0.48412292, x2 = x1 + 0.03125 / 0.98412292 = 1.06472475.
# yogi:    v0 - delta1^2 < 0, sign -1: v1 = 0.25 + 0.5 * 0.5625 = 0.53125, sqrt 0.72886899,
#          x1 = 1 + 0.0375 / 1.22886899 = 1.03051586;
#          v1 - delta2^2 > 0, sign +1: v2 = 0.53125 - 0.5 * 0.0625 = 0.5, sqrt 0.70710678,
#          x2 = x1 + 0.03125 / 1.20710678 = 1.05640421.
HAND = {
    "adagrad": (0.8125, 1.02675919, 0.875, 1.04852991),
    "adam": (0.40625, 1.03297059, 0.234375, 1.06472475),
    "yogi": (0.53125, 1.03051586, 0.5, 1.05640421),
}


@pytest.mark.parametrize("variant", ["adagrad", "adam", "yogi"])
def test_two_rounds_match_the_hand_computation(variant: Variant) -> None:
    strategy = FedOpt(variant=variant, server_lr=0.1, beta1=0.5, beta2=0.5, tau=0.5)
    v1, x1, v2, x2 = HAND[variant]

    first = strategy.aggregate(1, arrays(w=1.0), _results(1, ("a", arrays(w=1.0), 3), ("b", arrays(w=0.0), 1)))
    m_first, v_first = _moment(strategy, "m/w"), _moment(strategy, "v/w")
    second = strategy.aggregate(2, first.arrays, _results(2, ("a", arrays(w=0.5), 1), ("b", arrays(w=0.0), 1)))

    assert m_first == pytest.approx(0.375, abs=1e-6) and v_first == pytest.approx(v1, abs=1e-6)
    assert first.arrays["w"] == pytest.approx(x1, abs=1e-6)
    assert _moment(strategy, "m/w") == pytest.approx(0.3125, abs=1e-6)
    assert _moment(strategy, "v/w") == pytest.approx(v2, abs=1e-6)
    assert second.arrays["w"] == pytest.approx(x2, abs=1e-6)
    assert second.sites == ("a", "b") and second.num_examples == 2 and strategy.rounds == 2


@pytest.mark.parametrize(("variant", "expected_v"), [("adam", 0.9901), ("yogi", 0.9999)])
def test_yogi_shrinks_v_less_than_adam_when_v_exceeds_delta_squared(variant: Variant, expected_v: float) -> None:
    # tau = 1: v0 = 1 > delta^2 = 0.01. adam: v1 = 0.99 * 1 + 0.01 * 0.01 = 0.9901;
    # yogi: sign(v0 - delta^2) = +1, v1 = 1 - 0.01 * 0.01 = 0.9999
    strategy = FedOpt(variant=variant, tau=1.0)

    strategy.aggregate(1, arrays(w=0.0), _results(1, ("a", arrays(w=0.1), 1)))

    assert _moment(strategy, "v/w") == pytest.approx(expected_v, abs=1e-6)


def test_defaults_are_the_papers_moments_and_the_measured_server_rate() -> None:
    strategy = FedOpt()

    assert (strategy.name, strategy.server_lr, strategy.beta1, strategy.beta2, strategy.tau) == (
        "fedadam",
        0.03,  # measured on the shipped jobs (README, "Strategies")
        0.9,
        0.99,
        1e-3,
    )


@pytest.mark.parametrize(("missing", "m_left_out"), [("reported", 0.5), ("zero", 0.25)])
def test_the_pseudo_gradient_is_fedavgs_mean_of_sparse_updates(missing: Missing, m_left_out: float) -> None:
    # a sends [1, 1], b only entry 0 (= 3), one example each: delta = [2, 1] read as reported, [2, 0.5] as zero;
    # beta1 = 0.5, so m = 0.5 * delta
    strategy = FedOpt(beta1=0.5, missing=missing)
    sparse = SparseArrays.from_dense(arrays(w=[3.0, 0.0]), {"w": np.array([0])})

    strategy.aggregate(1, arrays(w=[0.0, 0.0]), _results(1, ("a", arrays(w=[1.0, 1.0]), 1), ("b", sparse, 1)))

    np.testing.assert_allclose(_moment(strategy, "m/w"), [1.0, m_left_out])


def test_integer_arrays_take_the_mean_update_without_moments() -> None:
    # counter 10; updates +2 on 3 examples and +5 on 1: mean (6 + 5) / 4 = 2.75, rounded: 10 + 2.75 -> 13
    global_arrays = Arrays.from_dict({"w": np.zeros(1, np.float32), "n": np.array([10], np.int64)})

    def update(count: int) -> Arrays:
        return Arrays.from_dict({"w": np.zeros(1, np.float32), "n": np.array([count], np.int64)})

    strategy = FedOpt()
    agg = strategy.aggregate(1, global_arrays, _results(1, ("a", update(2), 3), ("b", update(5), 1)))

    assert agg.arrays["n"].dtype == np.int64 and agg.arrays["n"][0] == 13
    assert strategy.state().arrays.names() == ("m/w", "v/w")


TARGETS = {"a": arrays(w=[2.0, 0.0]), "b": arrays(w=[0.0, 2.0]), "c": arrays(w=[1.0, 1.0])}


def _tasks() -> dict[str, QuadraticTask]:
    return {name: QuadraticTask(target, examples=10 * (i + 1)) for i, (name, target) in enumerate(TARGETS.items())}


@pytest.mark.parametrize("variant", ["adagrad", "adam", "yogi"])
def test_a_resumed_run_matches_an_unbroken_one(tmp_path: Path, variant: Variant) -> None:
    unbroken_strategy = FedOpt(variant=variant, server_lr=0.1)
    unbroken = simulate(unbroken_strategy, _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=4))
    simulate(
        FedOpt(variant=variant, server_lr=0.1),
        _tasks(),
        arrays(w=[0.0, 0.0]),
        LoopConfig(rounds=2, checkpoint_dir=tmp_path),
    )

    resumed_strategy = FedOpt(variant=variant, server_lr=0.1)
    resumed = simulate(resumed_strategy, _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=4, checkpoint_dir=tmp_path))

    assert resumed_strategy.rounds == 4 and [r.round for r in resumed.history.rounds] == [1, 2, 3, 4]
    assert resumed_strategy.state().arrays.allclose(unbroken_strategy.state().arrays, rtol=1e-6)
    np.testing.assert_allclose(resumed.arrays["w"], unbroken.arrays["w"], rtol=1e-6)


def test_a_fresh_strategy_gives_another_model_than_the_resumed_moments() -> None:
    # the check above is only meaningful if the moments matter: two rounds with and without history differ
    strategy = FedOpt(server_lr=0.1)
    strategy.aggregate(1, arrays(w=0.0), _results(1, ("a", arrays(w=1.0), 1)))

    with_history = strategy.aggregate(2, arrays(w=0.0), _results(2, ("a", arrays(w=1.0), 1)))
    fresh = FedOpt(server_lr=0.1).aggregate(2, arrays(w=0.0), _results(2, ("a", arrays(w=1.0), 1)))

    assert abs(float(with_history.arrays["w"]) - float(fresh.arrays["w"])) > 1e-3


def test_state_of_another_variant_is_refused() -> None:
    adam = FedOpt(variant="adam")
    adam.aggregate(1, arrays(w=0.0), _results(1, ("a", arrays(w=1.0), 1)))

    with pytest.raises(ConfideError, match="variant 'adam'"):
        FedOpt(variant="yogi").restore(adam.state())
    with pytest.raises(ConfideError, match="variant None"):
        FedOpt().restore(StrategyState())


@pytest.mark.parametrize(
    ("kept", "reason"),
    [
        ({"m/w": [0.0]}, "matching"),
        ({"m/w": [0.0], "v/w": [0.0, 0.0]}, "matching"),
        ({"m/w": [0.0], "velocity/w": [0.0]}, "'velocity/w'"),
    ],
)
def test_state_of_another_layout_is_refused(kept: dict[str, list[float]], reason: str) -> None:
    state = StrategyState(scalars={"variant": "adam", "rounds": 1}, arrays=arrays(**kept))

    with pytest.raises(ConfideError, match=reason):
        FedOpt().restore(state)


def test_restored_moments_that_do_not_fit_the_model_are_refused() -> None:
    strategy = FedOpt()
    strategy.restore(StrategyState(scalars={"variant": "adam", "rounds": 1}, arrays=arrays(**{"m/w": 0.0, "v/w": 1.0})))

    with pytest.raises(ConfideError, match="do not fit the model"):
        strategy.aggregate(2, arrays(w=[0.0, 0.0]), _results(2, ("a", arrays(w=[1.0, 1.0]), 1)))


@pytest.mark.parametrize(
    ("hyper", "named"),
    [({"server_lr": 0.0}, "server_lr"), ({"beta1": 1.0}, "beta1"), ({"beta2": -0.1}, "beta2"), ({"tau": 0.0}, "tau")],
)
def test_bad_hyper_parameters_are_refused_by_name(hyper: dict[str, float], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        FedOpt(**hyper)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=rf"federation\.{named}"):
        parse_job({"data": {"root": "x"}, "federation": {"strategy": "fedadam", **hyper}})


@pytest.mark.parametrize(("name", "variant"), [("fedadam", "adam"), ("fedyogi", "yogi"), ("fedadagrad", "adagrad")])
def test_jobs_and_make_strategy_know_the_variants(name: str, variant: str) -> None:
    job = parse_job({"data": {"root": "x"}, "federation": {"strategy": name, "server_lr": 0.5, "tau": 0.01}})

    lr = server_lr_for(job.federation.strategy, job.federation.server_lr)
    strategy = make_strategy(job.federation.strategy, {}, server_lr=lr, tau=job.federation.tau)

    assert isinstance(strategy, FedOpt) and strategy.name == name and strategy.variant == variant
    assert (strategy.server_lr, strategy.tau, strategy.beta1) == (0.5, 0.01, 0.9)


def test_client_level_dp_is_still_refused_with_a_server_optimiser() -> None:
    gaussian = {"filters": [{"type": "gaussian", "clip": 1.0, "noise_multiplier": 1.0}]}

    with pytest.raises(ConfigError, match="DP-FedAvg"):
        parse_job({"data": {"root": "x"}, "federation": {"strategy": "fedyogi"}, "privacy": gaussian})
    with pytest.raises(ValueError, match="cannot carry it"):
        make_strategy("fedyogi", {}, privacy=PrivacyConfig.model_validate(gaussian))


@pytest.mark.parametrize(("name", "variant"), [("fedadam", "adam"), ("fedyogi", "yogi"), ("fedadagrad", "adagrad")])
def test_a_job_without_server_lr_runs_at_its_strategys_default(name: str, variant: Variant) -> None:
    job = parse_job({"data": {"root": "x"}, "federation": {"strategy": name}})

    rate = server_lr_for(job.federation.strategy, job.federation.server_lr)

    assert job.federation.server_lr is None
    assert rate == DEFAULT_SERVER_LR[variant] == FedOpt(variant=variant).server_lr
    assert server_lr_for(name, 0.25) == 0.25  # a rate the job gives wins
