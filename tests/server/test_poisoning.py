"""Issue 11, part 2: no site poisons the model. Each attack below once moved the global model as far as the
attacker liked; now the update is refused or its weight capped, and the honest sites' round goes on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from confide import serde
from confide.config import FederationConfig
from confide.records import TrainRes
from confide.server.guard import OFF, GuardConfig, UpdateGuard, guard_config, norm_bound, share_cap
from confide.server.loop import LoopConfig, ServerLoop
from confide.site.runner import SiteRunner
from confide.strategies import FedAvg
from confide.transport.inmemory import InMemoryTransport
from tests.helpers import QuadraticTask, arrays

START = arrays(w=[0.0, 0.0])
HONEST = {"a": arrays(w=[2.0, 0.0]), "b": arrays(w=[0.0, 2.0]), "c": arrays(w=[1.0, 1.0])}


class Attacker:
    """A site with a valid certificate that answers every round with the update and count it chooses."""

    def __init__(self, update: list[float], examples: int) -> None:
        self.update, self.examples = update, examples

    def handle(self, payload: bytes | memoryview) -> bytes:
        round = serde.decode(payload).round  # type: ignore[union-attr]
        return serde.encode(TrainRes(round=round, update=arrays(w=self.update), num_examples=self.examples))


def _loop(attacker: Attacker | None, guard: GuardConfig, *, first: bool = True, **config: object) -> ServerLoop:
    honest: dict[str, object] = {name: SiteRunner(name, QuadraticTask(t, 10)) for name, t in HONEST.items()}
    endpoints = ({"mallory": attacker} | honest if first else honest | {"mallory": attacker}) if attacker else honest
    transport = InMemoryTransport(endpoints)  # type: ignore[arg-type]
    return ServerLoop(FedAvg({"lr": 0.5}), transport, START, LoopConfig(rounds=5, min_sites=3, guard=guard, **config))  # type: ignore[arg-type]


def _honest_only(rounds: int = 1) -> np.ndarray:
    loop = _loop(None, GuardConfig())
    for rnd in range(1, rounds + 1):
        loop.run_round(rnd)
    return np.asarray(loop.global_arrays["w"])


@pytest.mark.parametrize("first", [True, False], ids=["arrives first", "arrives last"])
def test_an_update_of_norm_3e38_is_refused_by_the_default_bound_and_the_honest_sites_aggregate(first: bool) -> None:
    """Before: no job field set the bound; the update was accepted and the model became inf (or 1e38)."""
    loop = _loop(Attacker([3e38, 3e38], 10), GuardConfig(), first=first)

    result = loop.run_round(1)

    assert "exceeds the bound" in result.failures["mallory"]
    assert sorted(result.sites) == ["a", "b", "c"]
    np.testing.assert_allclose(loop.global_arrays["w"], _honest_only(), rtol=1e-6)


def test_a_moderately_oversized_update_is_refused_in_a_later_round_from_recent_norms() -> None:
    """The attacker behaves in round 1, then sends 50 times the honest norm."""
    attacker = Attacker([0.5, 0.5], 10)
    loop = _loop(attacker, GuardConfig())
    loop.run_round(1)
    honest_norms = [n for n in loop.guard.norms[-1]]
    attacker.update = [50.0 * max(honest_norms), 0.0]

    result = loop.run_round(2)

    assert "exceeds the bound derived from recent updates" in result.failures["mallory"]
    assert sorted(result.sites) == ["a", "b", "c"]


def test_a_site_claiming_10e15_examples_gets_at_most_its_share() -> None:
    """Before: 10^15 examples moved the model by exactly the attacker's update."""
    target = [-0.9, -0.9]  # within the norm bound: only the weight makes it an attack
    loop = _loop(Attacker(target, 10**15), GuardConfig(max_share=0.5))

    loop.run_round(1)

    moved = np.asarray(loop.global_arrays["w"])
    honest = _honest_only()
    # the attacker's share of the mean is at most one half: the model lies at least half-way to the honest mean
    share = np.linalg.norm(moved - honest) / np.linalg.norm(np.asarray(target) - honest)
    assert share <= 0.5 + 1e-6
    assert not np.allclose(moved, target, atol=1e-3)


def test_without_the_cap_the_same_count_takes_the_model_over() -> None:
    """The attack itself, with the guard off: the model becomes the attacker's update (why the cap exists)."""
    loop = _loop(Attacker([-0.9, -0.9], 10**15), OFF)

    loop.run_round(1)

    np.testing.assert_allclose(loop.global_arrays["w"], [-0.9, -0.9], atol=1e-6)


def test_a_count_larger_than_the_sites_first_report_is_capped_to_it() -> None:
    attacker = Attacker([0.5, 0.5], 10)
    loop = _loop(attacker, GuardConfig(max_share=1.0))
    loop.run_round(1)
    attacker.examples = 10_000

    loop.run_round(2)

    assert loop.guard.last_weight["mallory"] == 10


def test_the_jobs_max_examples_caps_every_count() -> None:
    loop = _loop(Attacker([0.5, 0.5], 10**9), GuardConfig(max_examples=25, max_share=1.0))

    loop.run_round(1)

    assert loop.guard.last_weight == {"mallory": 25, "a": 10, "b": 10, "c": 10}


def test_a_fixed_bound_from_the_job_refuses_above_it_and_off_accepts_everything_finite() -> None:
    fixed = _loop(Attacker([3.0, 4.0], 10), guard_config(FederationConfig(max_update_norm=4.9)))
    off = _loop(Attacker([3.0, 4.0], 10), guard_config(FederationConfig(max_update_norm="off", max_site_share=1)))

    refused, accepted = fixed.run_round(1), off.run_round(1)

    assert "exceeds the job's bound 4.9" in refused.failures["mallory"]
    assert "mallory" in accepted.sites


def test_the_guards_memory_survives_a_server_restart(tmp_path: Path) -> None:
    first = _loop(Attacker([0.5, 0.5], 10), GuardConfig(), checkpoint_dir=tmp_path)
    first.run_round(1)
    first.run_round(2)
    first.flush_checkpoint()  # round 2's checkpoint is written while a next round would run

    resumed = _loop(Attacker([0.5, 0.5], 10_000), GuardConfig(), checkpoint_dir=tmp_path)
    resumed.guard.start_round(["a", "b", "c", "mallory"])

    assert resumed.guard.norms == first.guard.norms and not resumed.guard.calibrating
    assert resumed.guard.weight("mallory", 10_000, ["a", "b", "c", "mallory"])[0] == 10


def test_the_job_file_fields_and_their_errors() -> None:
    assert guard_config(FederationConfig()) == GuardConfig(max_norm=None, auto_norm=True, multiple=10.0, max_share=0.5)
    for bad in ({"max_update_norm": -1}, {"max_update_norm": "nan"}, {"max_site_share": 0}, {"norm_multiple": 1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FederationConfig(**bad)  # type: ignore[arg-type]


def test_the_arithmetic() -> None:
    assert norm_bound([1.0, 2.0, 1e30], 10) == 20.0  # one huge norm among three cannot move the median
    assert norm_bound([1.0, 1e30], 10) == 10.0  # with two, the smaller one sets it
    assert norm_bound([0.0, 0.0], 10) is None
    assert share_cap(300, 0.5) == 300 and share_cap(300, 0.25) == 100 and share_cap(300, 1.0) is None
    guard = UpdateGuard(GuardConfig(max_share=0.5))
    guard.last_weight = {"a": 100, "b": 50}
    weight, note = guard.weight("c", 10**15, ["a", "b", "c"])
    assert weight == 150 and "share of 50%" in str(note)
    assert guard.weight("c", 40, ["a", "b", "c"]) == (40, None)


def test_honest_sites_of_different_sizes_are_never_refused_or_capped_over_many_rounds() -> None:
    sites = {name: SiteRunner(name, QuadraticTask(t, 10 * (i + 1))) for i, (name, t) in enumerate(HONEST.items())}
    loop = ServerLoop(FedAvg({"lr": 0.5}), InMemoryTransport(sites), START, LoopConfig(rounds=12, min_sites=3))  # type: ignore[arg-type]

    history = loop.run()

    assert all(not r.failures and len(r.sites) == 3 for r in history.rounds)
    assert loop.guard.last_weight == {"a": 10, "b": 20, "c": 30}


def test_a_capped_count_is_told_to_the_site_once_not_every_round(caplog: pytest.LogCaptureFixture) -> None:
    """Two honest hospitals of 30 and 10 cases under a share of 0.5: the larger one is capped every round, and
    hears it once."""
    told: list[str] = []

    class Listening(SiteRunner):
        def notice(self, message: str) -> None:
            told.append(message)

    sites = {
        "big": Listening("big", QuadraticTask(HONEST["a"], 30)),
        "small": SiteRunner("s", QuadraticTask(HONEST["b"], 10)),
    }
    loop = ServerLoop(FedAvg({"lr": 0.5}), InMemoryTransport(sites), START, LoopConfig(rounds=4, min_sites=2))  # type: ignore[arg-type]

    loop.run()

    assert loop.guard.last_weight == {"big": 10, "small": 10}
    assert len([m for m in told if "capped" in m]) == 1
    assert len([r for r in caplog.records if "capped" in r.getMessage() and r.levelname == "WARNING"]) == 1
