"""Issue 11, fuzzing: one site's answer, valid and then mutated field by field, never harms the federation.

A site answers as it really does (a :class:`~confide.site.runner.SiteRunner`, its answer encoded by serde); the
answer's structure is then mutated (``site_answer_mutations.py``: the Confide header's fields, the meta, metrics and
scalars, the tensor entries' dtype, shape and offsets, the body) and the bytes go through the server's own
decode-and-check boundary inside a real round of :class:`~confide.server.loop.ServerLoop`, beside two honest sites.
Whatever the mutation, the server does not raise, the mutated site is accepted with a finite update that fits the
model or rejected with a short one-line reason, and the honest sites' updates make the next, finite model.

``tests/test_serde_fuzz.py`` fuzzes serde's bytes alone (random bytes, flipped bytes); this file fuzzes what a
hostile site can write that still looks like a message, through the server.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from confide import serde
from confide.errors import ConfideError, RoundFailed
from confide.privacy.filter import FilterChain
from confide.privacy.sparsify import Sparsify
from confide.records import Arrays, Control, Record, TrainIns, TrainRes
from confide.server.loop import LoopConfig, RoundResult, ServerLoop
from confide.server.secure_round import SecureSettings
from confide.sim_identities import SimFederation
from confide.site.runner import SiteRunner
from confide.strategies import FedAvg
from confide.transport.inmemory import InMemoryTransport
from tests.helpers import QuadraticTask
from tests.server.site_answer_mutations import MUTATIONS, AddTensor, Body, Mutation, SetEntry, SetHeader, mutate

START = Arrays.from_dict({"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)})
TARGETS = {
    "a": Arrays.from_dict({"w": np.full((2, 3), 2.0, np.float32), "b": np.ones(3, np.float32)}),
    "b": Arrays.from_dict({"w": np.full((2, 3), -1.0, np.float32), "b": np.zeros(3, np.float32)}),
    "mallory": Arrays.from_dict({"w": np.ones((2, 3), np.float32), "b": np.full(3, 3.0, np.float32)}),
}
REASON_LIMIT = 500
"""The most characters of a rejection's reason (a site's own text is cut at 300, the server adds its words)."""
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Mallory:
    """A site of the federation that computes its honest answer, then sends it mutated (its training answers, or
    its evaluation answers)."""

    runner: SiteRunner
    mutations: list[Mutation]
    mutate_training: bool = True
    sent: list[bytes] = field(default_factory=list)

    def handle(self, payload: bytes | memoryview) -> bytes:
        answer = self.runner.handle(payload)
        if isinstance(serde.decode(payload), TrainIns) != self.mutate_training:
            return answer
        hostile = mutate(answer, self.mutations)
        self.sent.append(hostile)
        return hostile

    def notice(self, message: str) -> None:
        self.runner.notice(message)


def _federation(mallory: Mallory, *, evaluate: bool = False) -> ServerLoop:
    """Two honest sites around mallory; their two updates alone make the quorum."""
    endpoints = {
        "a": SiteRunner("a", QuadraticTask(TARGETS["a"], 10)),
        "mallory": mallory,
        "b": SiteRunner("b", QuadraticTask(TARGETS["b"], 10)),
    }
    config = LoopConfig(rounds=1, min_sites=2, evaluate_every=1 if evaluate else 0)
    return ServerLoop(FedAvg({"lr": 0.5}), InMemoryTransport(endpoints), START, config)


def _site(kind: str) -> SiteRunner:
    """Mallory's honest side: a dense update, a sparse one (partial sharing), or a failure."""
    chain = FilterChain([Sparsify(0.5)]) if kind == "sparse" else None
    return SiteRunner("mallory", QuadraticTask(TARGETS["mallory"], 10, fail=kind == "failure"), chain=chain)


def _decoded_by_serde_alone(data: bytes) -> Record | None:
    """Serde's own contract: a message decodes or is refused with Confide's own error, never another exception
    (the server's boundary would catch one, but it would be a bug of serde's)."""
    with contextlib.suppress(ConfideError):
        return serde.decode(data)
    return None


def _assert_one_short_line(reason: str) -> None:
    assert "\n" not in reason and "\r" not in reason, reason[:REASON_LIMIT]
    assert reason.isprintable(), reason[:REASON_LIMIT]
    assert len(reason) <= REASON_LIMIT, f"{len(reason)} characters: {reason[:REASON_LIMIT]}…"


def _assert_honest_round(result: RoundResult, loop: ServerLoop) -> None:
    assert {"a", "b"} <= set(result.sites)
    for name, value in loop.global_arrays.items():
        assert value.shape == START[name].shape and np.isfinite(value).all()


@FUZZ
@given(st.sampled_from(["dense", "sparse", "failure"]), MUTATIONS)
def test_a_mutated_training_answer_is_accepted_whole_or_rejected_in_one_line(
    kind: str, mutations: list[Mutation]
) -> None:
    mallory = Mallory(_site(kind), mutations)
    loop = _federation(mallory)

    result = loop.run_round(1)

    _assert_honest_round(result, loop)
    (sent,) = mallory.sent
    record = _decoded_by_serde_alone(sent)
    if "mallory" in result.sites:
        event("accepted")
        assert isinstance(record, TrainRes) and record.num_examples > 0 and record.update.names() == START.names()
        values = record.update.values if not isinstance(record.update, Arrays) else record.update
        assert all(np.isfinite(value).all() for value in values.values())
    else:
        event(f"rejected: {result.failures['mallory'][:60]}")
        _assert_one_short_line(result.failures["mallory"])
        assert "mallory" in result.failures["mallory"]


@FUZZ
@given(MUTATIONS)
def test_a_mutated_evaluation_answer_never_stops_the_round(mutations: list[Mutation]) -> None:
    mallory = Mallory(_site("dense"), mutations, mutate_training=False)
    loop = _federation(mallory, evaluate=True)

    result = loop.run_round(1)

    _assert_honest_round(result, loop)
    assert "mallory" in result.sites and {"a", "b"} <= set(result.eval_metrics)
    (sent,) = mallory.sent
    _decoded_by_serde_alone(sent)
    for metrics in result.eval_metrics.values():
        assert all(isinstance(value, float) for value in metrics.values())


def test_an_unmutated_answer_is_accepted() -> None:
    """The fuzzing starts from answers the server takes: unmutated, mallory's sparse update and evaluation count."""
    mallory = Mallory(_site("sparse"), [])
    loop = _federation(mallory, evaluate=True)

    result = loop.run_round(1)

    assert set(result.sites) == {"a", "b", "mallory"} and "mallory" in result.eval_metrics
    assert isinstance(serde.decode(mallory.sent[0]), TrainRes)


WRAPPING_SHAPE = [6, 2**21 + 1, 2**42 - 2**21 + 1]
"""6 * (2**63 + 1) entries: numpy's int64 product wraps around to 6."""


def test_an_evaluation_answer_whose_shape_wraps_around_int64_does_not_stop_the_server() -> None:
    """Found by this fuzzing: serde let numpy's ValueError out of decode for a header shape whose int64 product
    wrapped around to the array's size, and the round's evaluation, which catches only Confide's errors, raised it
    out of ``run_round``: one site's evaluation answer stopped the server."""
    entry = {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}
    wrapped = [
        SetHeader("names", ["w"]),
        SetHeader("shapes", [WRAPPING_SHAPE]),
        AddTensor("w", entry),
        Body(extra=bytes(24)),
    ]
    mallory = Mallory(_site("dense"), wrapped, mutate_training=False)
    loop = _federation(mallory, evaluate=True)

    result = loop.run_round(1)

    assert {"a", "b"} <= set(result.eval_metrics) and "mallory" not in result.eval_metrics
    assert "mallory" in result.sites


SECURE_STEPS = ("secagg/advertise", "secagg/roster", "secagg/train", "secagg/confirm", "secagg/unmask")
FEDERATION = SimFederation.create(["a", "b", "c", "mallory"])


@dataclass
class SecureMallory:
    """A site of a secure federation that answers every step honestly except ``step``, whose answer it mutates."""

    runner: SiteRunner
    step: str
    mutations: list[Mutation]
    sent: list[bytes] = field(default_factory=list)

    def handle(self, payload: bytes | memoryview) -> bytes:
        answer = self.runner.handle(payload)
        instruction = serde.decode(payload)
        if not isinstance(instruction, Control) or instruction.topic != self.step:
            return answer
        hostile = mutate(answer, self.mutations)
        self.sent.append(hostile)
        return hostile


def _secure_site(name: str, target: str) -> SiteRunner:
    task = QuadraticTask(TARGETS[target], 10)
    return SiteRunner(name, task, secure_aggregation=True, identity=FEDERATION.identities[name])


def _secure_federation(mallory: SecureMallory) -> ServerLoop:
    """Three honest sites around mallory: with the threshold at 3 of 4, they alone can finish the round."""
    endpoints = {
        "a": _secure_site("a", "a"),
        "b": _secure_site("b", "b"),
        "c": _secure_site("c", "a"),
        "mallory": mallory,
    }
    settings = SecureSettings(revocation_list=FEDERATION.revocation_list)
    config = LoopConfig(rounds=1, min_sites=3, secure=settings)
    return ServerLoop(FedAvg({"lr": 0.5}), InMemoryTransport(endpoints), START, config)


@FUZZ
@given(st.sampled_from(SECURE_STEPS), MUTATIONS)
def test_a_mutated_secure_aggregation_answer_leaves_out_that_site_only(step: str, mutations: list[Mutation]) -> None:
    """Under secure aggregation a mutated answer at any of the five steps leaves mallory out from that step on; the
    three honest sites still reach the threshold (3 of 4). The one exception is the protocol's own: an unmask
    answer that decodes but carries wrong shares fails the round, keeping the model, without naming its sender."""
    mallory = SecureMallory(_secure_site("mallory", "mallory"), step, mutations)
    loop = _secure_federation(mallory)

    try:
        result = loop.run_round(1)
    except RoundFailed as exc:
        event(f"round failed at {step}")
        assert step == "secagg/unmask", str(exc)[:REASON_LIMIT]
        assert np.array_equal(loop.global_arrays["w"], START["w"])
        return

    _assert_honest_round(result, loop)
    assert "c" in result.sites
    (sent,) = mallory.sent
    _decoded_by_serde_alone(sent)
    if step in ("secagg/advertise", "secagg/roster") and "mallory" in result.failures:
        assert "mallory" not in result.sites  # left out before it masked anything
    if "mallory" in result.failures:
        event(f"left out at {step}: {result.failures['mallory'][:200]}")
        _assert_one_short_line(result.failures["mallory"])
    else:
        event(f"kept at {step}")


def test_a_masked_answer_whose_task_seconds_is_not_a_number_is_either_counted_or_left_out() -> None:
    """Found by this fuzzing: a masked answer whose ``meta.task_seconds`` is the text "soon" is reported as left
    out ("its train message could not be read (ValueError)") while its masked update is already in the sum, so
    the round's result names mallory both among its sites and its failures, and its update counts. Now the field
    is read (as a plausible number, else the measured time) before the masked update joins the sum."""
    mallory = SecureMallory(
        _secure_site("mallory", "mallory"), "secagg/train", [SetEntry("values", "meta.task_seconds", "soon")]
    )
    loop = _secure_federation(mallory)

    result = loop.run_round(1)

    assert ("mallory" in result.sites) != ("mallory" in result.failures)
