from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from confide import serde
from confide.errors import ConfideError, RoundFailed
from confide.records import Arrays, Config, TrainRes
from confide.server import checkpoint
from confide.server.checks import check_update
from confide.server.loop import LoopConfig, ServerLoop
from confide.sim import simulate
from confide.site.runner import SiteRunner
from confide.strategies import FedAvg
from confide.transport.inmemory import InMemoryTransport
from tests.helpers import QuadraticTask, arrays

TARGETS = {"a": arrays(w=[2.0, 0.0]), "b": arrays(w=[0.0, 2.0]), "c": arrays(w=[1.0, 1.0])}


def _tasks(**overrides: QuadraticTask) -> dict[str, QuadraticTask]:
    tasks = {name: QuadraticTask(t, examples=10) for name, t in TARGETS.items()}
    tasks.update(overrides)
    return tasks


def test_federation_converges_to_the_weighted_optimum() -> None:
    # equal weights: the optimum of the summed objectives is the mean target [1, 1]
    result = simulate(FedAvg({"lr": 0.5, "local_steps": 1}), _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=30))

    np.testing.assert_allclose(result.arrays["w"], [1.0, 1.0], atol=1e-4)
    losses = [r.train_metrics["loss"] for r in result.history.rounds]
    assert losses[-1] < losses[0]


def test_a_failing_site_is_dropped_and_the_round_completes() -> None:
    tasks = _tasks(b=QuadraticTask(TARGETS["b"], 10, fail=True))

    result = simulate(FedAvg(), tasks, arrays(w=[0.0, 0.0]), LoopConfig(rounds=1, min_sites=2))

    rnd = result.history.rounds[0]
    assert rnd.sites == ("a", "c")
    assert "disk full" in rnd.failures["b"]


def test_a_nan_update_is_rejected_with_its_reason() -> None:
    tasks = _tasks(c=QuadraticTask(TARGETS["c"], 10, nan=True))

    result = simulate(FedAvg(), tasks, arrays(w=[0.0, 0.0]), LoopConfig(rounds=1))

    rnd = result.history.rounds[0]
    assert "NaN" in rnd.failures["c"] and rnd.sites == ("a", "b")
    assert np.isfinite(result.arrays["w"]).all()


def test_quorum_not_met_fails_the_round_and_keeps_the_model() -> None:
    tasks = _tasks(a=QuadraticTask(TARGETS["a"], 10, fail=True), b=QuadraticTask(TARGETS["b"], 10, fail=True))
    transport = InMemoryTransport({n: SiteRunner(n, t) for n, t in tasks.items()})
    start = arrays(w=[0.0, 0.0])
    loop = ServerLoop(FedAvg(), transport, start, LoopConfig(rounds=1, min_sites=2))

    with pytest.raises(RoundFailed, match="quorum is 2"):
        loop.run()
    assert loop.global_arrays is start


def test_disconnected_site_is_reported() -> None:
    transport = InMemoryTransport({n: SiteRunner(n, t) for n, t in _tasks().items()})
    transport.disconnect("b")
    loop = ServerLoop(FedAvg(), transport, arrays(w=[0.0, 0.0]), LoopConfig(rounds=1, min_sites=3))

    with pytest.raises(RoundFailed, match="2 site"):
        loop.run()


def test_federated_evaluation_collects_every_site() -> None:
    result = simulate(FedAvg(), _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=2, evaluate_every=2))

    assert result.history.rounds[0].eval_metrics == {}
    assert set(result.history.rounds[1].eval_metrics) == {"a", "b", "c"}


def test_checkpoint_resumes_after_the_last_round(tmp_path: Path) -> None:
    config = LoopConfig(rounds=3, checkpoint_dir=tmp_path)
    first = simulate(FedAvg(), _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=2, checkpoint_dir=tmp_path))

    resumed = ServerLoop(FedAvg(), InMemoryTransport({}), arrays(w=[0.0, 0.0]), config)

    assert resumed.start_round == 3
    assert resumed.global_arrays.allclose(first.arrays)
    assert checkpoint.load_latest(tmp_path).round == 2  # type: ignore[union-attr]


def test_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, 1, arrays(w=[0.0, 0.0, 0.0]), {})

    with pytest.raises(ConfideError, match="does not fit"):
        ServerLoop(
            FedAvg(),
            InMemoryTransport({}),
            arrays(w=[0.0, 0.0]),
            LoopConfig(rounds=2, checkpoint_dir=tmp_path),
        )


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, 1, arrays(w=[0.0]), {})
    next(tmp_path.glob("*.safetensors")).write_bytes(b"garbage")

    with pytest.raises(ConfideError, match="cannot be read"):
        checkpoint.load_latest(tmp_path)


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (Arrays.from_dict({"w": np.zeros(3, np.float32)}), "shape"),
        (Arrays.from_dict({"w": np.zeros(2, np.float64)}), "dtype"),
        (Arrays.from_dict({"v": np.zeros(2, np.float32)}), "missing"),
        (Arrays.from_dict({"w": np.array([np.inf, 0], np.float32)}), "NaN or infinite"),
        (Arrays.from_dict({"w": np.array([30.0, 40.0], np.float32)}), "norm 50"),
    ],
)
def test_check_update_names_what_is_wrong(update: Arrays, reason: str) -> None:
    res = TrainRes(round=1, update=update, num_examples=1)

    with pytest.raises(ConfideError, match=reason):
        check_update("site-x", res, arrays(w=[0.0, 0.0]), max_norm=10.0)


def test_garbage_reply_is_a_failure_not_a_crash() -> None:
    class Garbage:
        def handle(self, payload: bytes) -> bytes:
            return b"\x00" * 20

    runners = {n: SiteRunner(n, t) for n, t in _tasks().items()}
    transport = InMemoryTransport({**runners, "evil": Garbage()})
    loop = ServerLoop(FedAvg(), transport, arrays(w=[0.0, 0.0]), LoopConfig(rounds=1))

    rnd = loop.run_round(1)

    assert "undecodable" in rnd.failures["evil"] and len(rnd.sites) == 3


def test_site_answers_garbage_instruction_with_a_failure() -> None:
    runner = SiteRunner("a", QuadraticTask(TARGETS["a"], 1))

    reply = serde.decode(runner.handle(b"not a message"))

    assert type(reply).__name__ == "Failure" and "could not decode" in reply.reason  # type: ignore[union-attr]


def test_resumed_loop_keeps_the_history_of_earlier_rounds(tmp_path: Path) -> None:
    simulate(FedAvg(), _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=2, checkpoint_dir=tmp_path))
    transport = InMemoryTransport({n: SiteRunner(n, t) for n, t in _tasks().items()})

    loop = ServerLoop(FedAvg(), transport, arrays(w=[0.0, 0.0]), LoopConfig(rounds=3, checkpoint_dir=tmp_path))
    history = loop.run()

    assert [r.round for r in history.rounds] == [1, 2, 3]
    assert history.rounds[0].sites == ("a", "b", "c")


def test_a_rejected_site_is_told_why_and_a_failing_one_is_not() -> None:
    runners = {
        "a": SiteRunner("a", QuadraticTask(TARGETS["a"], 10)),
        "b": SiteRunner("b", QuadraticTask(TARGETS["b"], 10, nan=True)),
        "c": SiteRunner("c", QuadraticTask(TARGETS["c"], 10, fail=True)),
    }
    loop = ServerLoop(FedAvg(), InMemoryTransport(runners), arrays(w=[0.0, 0.0]), LoopConfig(rounds=1))

    loop.run()

    assert len(runners["b"].notices) == 1 and "NaN" in runners["b"].notices[0]
    assert runners["a"].notices == [] and runners["c"].notices == []  # c failed on its own: it knows why


class FlakyOnce(QuadraticTask):
    """Fails its first call (a site that hiccups), then works."""

    def __init__(self, target: Arrays) -> None:
        super().__init__(target, examples=10)
        self.calls = 0

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("network share not mounted yet")
        return super().train(arrays, config, round)


def test_a_round_missing_its_quorum_is_retried_and_then_completes() -> None:
    tasks = {**_tasks(), "b": FlakyOnce(TARGETS["b"])}
    transport = InMemoryTransport({n: SiteRunner(n, t) for n, t in tasks.items()})
    config = LoopConfig(rounds=2, min_sites=3, quorum_retries=1, retry_wait_s=0.0)

    history = ServerLoop(FedAvg(), transport, arrays(w=[0.0, 0.0]), config).run()

    assert [r.round for r in history.rounds] == [1, 2]
    assert all(len(r.sites) == 3 for r in history.rounds)


class MomentumAvg:
    """FedAvg with a server momentum buffer and a round counter: state that must survive a restart."""

    name = "momentum-test"

    def __init__(self) -> None:
        self.inner = FedAvg()
        self.velocity: np.ndarray | None = None
        self.rounds_seen = 0

    def configure(self, round, global_arrays, sites):  # type: ignore[no-untyped-def]
        return self.inner.configure(round, global_arrays, sites)

    def aggregate(self, round, global_arrays, results):  # type: ignore[no-untyped-def]
        agg = self.inner.aggregate(round, global_arrays, results)
        step = agg.arrays["w"] - global_arrays["w"]
        self.velocity = step if self.velocity is None else 0.5 * self.velocity + step
        self.rounds_seen += 1
        from dataclasses import replace

        return replace(agg, arrays=Arrays.from_dict({"w": global_arrays["w"] + self.velocity}))

    def state(self):  # type: ignore[no-untyped-def]
        from confide.strategies.base import StrategyState

        kept = Arrays.from_dict({"velocity": self.velocity}) if self.velocity is not None else Arrays(())
        return StrategyState(scalars={"rounds_seen": self.rounds_seen}, arrays=kept)

    def restore(self, state):  # type: ignore[no-untyped-def]
        self.rounds_seen = int(state.scalars["rounds_seen"])
        self.velocity = np.array(state.arrays["velocity"])


def test_strategy_state_is_checkpointed_and_a_resumed_run_matches_an_unbroken_one(tmp_path: Path) -> None:
    unbroken = simulate(MomentumAvg(), _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=4))
    simulate(MomentumAvg(), _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=2, checkpoint_dir=tmp_path))

    resumed_strategy = MomentumAvg()
    resumed = simulate(resumed_strategy, _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=4, checkpoint_dir=tmp_path))

    assert resumed_strategy.rounds_seen == 4  # two before the restart, restored, then two more
    np.testing.assert_allclose(resumed.arrays["w"], unbroken.arrays["w"], rtol=1e-6)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [  # this round's and the one before
        "global-round00003.safetensors",
        "global-round00004.safetensors",
        "strategy-round00003.safetensors",
        "strategy-round00004.safetensors",
    ]


def test_a_checkpoint_of_another_strategy_is_refused(tmp_path: Path) -> None:
    simulate(MomentumAvg(), _tasks(), arrays(w=[0.0, 0.0]), LoopConfig(rounds=1, checkpoint_dir=tmp_path))

    with pytest.raises(ConfideError, match="written by strategy 'momentum-test'"):
        ServerLoop(FedAvg(), InMemoryTransport({}), arrays(w=[0.0, 0.0]), LoopConfig(rounds=2, checkpoint_dir=tmp_path))


def test_two_checkpoint_generations_are_kept(tmp_path: Path) -> None:
    for rnd in (1, 2, 3):
        checkpoint.save(tmp_path, rnd, arrays(w=[float(rnd), 0.0]), {"history": []})

    models = sorted(p.name for p in tmp_path.glob("global-round*.safetensors"))
    assert models == ["global-round00002.safetensors", "global-round00003.safetensors"]
    assert json.loads((tmp_path / "previous.json").read_text())["round"] == 2
    latest = checkpoint.load_latest(tmp_path)
    assert latest is not None and latest.round == 3
    (tmp_path / "previous.json").replace(tmp_path / "latest.json")  # what an operator does after a bad round
    earlier = checkpoint.load_latest(tmp_path)
    assert earlier is not None and earlier.round == 2 and float(earlier.arrays["w"][0]) == 2.0


def test_an_instruction_shared_by_every_site_is_encoded_once_per_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the loop encoded (and the transport hashed) the global model once per site."""
    encoded: list[str] = []
    original = serde.encode_parts

    def counting(record: object) -> serde.Encoded:
        encoded.append(type(record).__name__)
        return original(record)  # type: ignore[arg-type]

    monkeypatch.setattr(serde, "encode_parts", counting)
    sites = {name: SiteRunner(name, QuadraticTask(arrays(w=[float(i), 1.0]), 10)) for i, name in enumerate("abcdef")}
    loop = ServerLoop(FedAvg({"lr": 0.5}), InMemoryTransport(sites), arrays(w=[0.0, 0.0]), LoopConfig(rounds=1))

    loop.run_round(1)

    assert encoded.count("TrainIns") == 1
