"""Issue 10, parts 1 and 2: privacy noise no one else can regenerate, and nothing data-dependent leaves a site
under differential privacy unless it was noised and charged."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from confide import serde
from confide.privacy.build import site_chain, site_ledger
from confide.privacy.config import PrivacyConfig
from confide.privacy.gaussian import clip_to_norm
from confide.records import EvalIns, Failure, TrainIns, TrainRes
from confide.site.release import PLAIN_META, RELEASED_META
from confide.site.runner import SiteRunner
from tests.helpers import QuadraticTask, arrays

REPO = Path(__file__).resolve().parents[2]
TARGET = arrays(w=np.linspace(-1.0, 1.0, 5000).tolist())
START = arrays(w=[0.0] * 5000)
GAUSS = {"type": "gaussian", "clip": 1.0, "noise_multiplier": 1.0}


def _runner(privacy: PrivacyConfig, sites: int = 4) -> SiteRunner:
    return SiteRunner(
        "site-1",
        QuadraticTask(TARGET, examples=37),
        chain=site_chain(privacy, sites),
        ledger=site_ledger(privacy, "site-1", None),
    )


def _send(runner: SiteRunner, record: TrainIns | EvalIns) -> object:
    return serde.decode(runner.handle(serde.encode(record)))  # what the server receives


def _private() -> PrivacyConfig:
    return PrivacyConfig.model_validate({"filters": [GAUSS]})


def test_the_server_cannot_regenerate_the_noise_from_the_job_and_subtract_it() -> None:
    """The attack: the old filter generator was seeded with the job's seed and the site's name; whoever held the
    job file rebuilt the noise and recovered the clipped update (error 4e-8). It now misses by the noise itself."""
    ins = TrainIns(round=1, arrays=START, config={"lr": 0.5})
    sent = _send(_runner(_private()), ins)
    assert isinstance(sent, TrainRes)
    clipped = clip_to_norm(QuadraticTask(TARGET, 37).train(START, ins.config, 1).update, 1.0)[0]["w"]  # type: ignore[arg-type]
    std = 1.0 * 1.0 / np.sqrt(4)

    errors = []
    for seed in range(3):  # the attacker's guesses at the old seeding, with the job's seed
        old = np.random.default_rng(np.random.SeedSequence([seed, *b"site-1"]))
        guess = sent.update["w"] - old.normal(0.0, std, size=5000).astype(np.float32)  # type: ignore[union-attr,index]
        errors.append(float(np.abs(guess - clipped).max()))

    assert min(errors) > 1.0  # the residual is noise of std 0.5, not 4e-8


def test_two_runs_of_one_private_job_differ_and_two_of_a_plain_job_do_not() -> None:
    ins = TrainIns(round=1, arrays=START, config={"lr": 0.5})

    private = [_send(_runner(_private()), ins) for _ in range(2)]
    plain = [_send(_runner(PrivacyConfig()), ins) for _ in range(2)]

    a, b = (r.update["w"] for r in private)  # type: ignore[attr-defined]
    assert float(np.abs(a - b).max()) > 0.1
    c, d = (r.update["w"] for r in plain)  # type: ignore[attr-defined]
    assert np.array_equal(c, d)


def test_under_dp_only_the_noised_update_and_the_site_configuration_leave() -> None:
    """Before: the exact pre-clip norm, the training loss and the timing travelled beside the noised update."""
    sent = _send(_runner(_private()), TrainIns(round=1, arrays=START, config={"lr": 0.5}))

    assert isinstance(sent, TrainRes)
    assert dict(sent.metrics) == {}  # no exact loss
    assert sent.num_examples == 1  # the site's size is data: updates weigh equally under DP
    assert set(sent.meta) <= RELEASED_META
    assert "dp_norm_before_clip" not in sent.meta and "task_seconds" not in sent.meta
    assert {"filters", "epsilon", "delta", "dp_clip", "dp_noise_std"} <= set(sent.meta)


def test_without_dp_the_site_reports_its_loss_and_size() -> None:
    sent = _send(_runner(PrivacyConfig()), TrainIns(round=1, arrays=START, config={"lr": 0.5}))

    assert isinstance(sent, TrainRes)
    assert sent.num_examples == 37 and "loss" in sent.metrics and set(sent.meta) <= PLAIN_META


def test_a_task_training_with_dp_sgd_alone_also_holds_back_its_loss() -> None:
    class PrivateTask(QuadraticTask):
        def privacy_spend(self, config: object) -> list[object]:
            from confide.privacy.spend import Spend

            return [Spend("dp-sgd", noise_multiplier=1.0, sampling_rate=0.1, steps=1)]

    runner = SiteRunner("site-1", PrivateTask(TARGET, examples=37))

    sent = _send(runner, TrainIns(round=1, arrays=START, config={"lr": 0.5}))

    assert isinstance(sent, TrainRes) and dict(sent.metrics) == {} and sent.num_examples == 1


def test_evaluation_is_refused_under_dp_and_answered_without() -> None:
    private = _send(_runner(_private()), EvalIns(round=2, arrays=START))
    plain = _send(_runner(PrivacyConfig()), EvalIns(round=2, arrays=START))

    assert isinstance(private, Failure) and private.kind == "refused"
    assert "differential privacy" in private.reason
    assert not isinstance(plain, Failure)


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_integer_arrays_are_left_out_of_a_noised_update_never_noised_as_integers(dtype: type) -> None:
    task_update = {"w": np.full(1000, 0.01, np.float32), "count": np.array([7], dtype=dtype)}

    class Counting(QuadraticTask):
        def train(self, arrays: object, config: object, round: int) -> TrainRes:
            from confide.records import Arrays

            return TrainRes(round=round, update=Arrays.from_dict(task_update), num_examples=3)

    runner = SiteRunner("s", Counting(TARGET, 3), chain=site_chain(_private(), 4))

    res = runner._train(TrainIns(round=1, arrays=START))

    assert isinstance(res, TrainRes)
    assert res.update["count"].dtype == dtype and int(res.update["count"][0]) == 0  # type: ignore[union-attr,index]


def test_design_lists_every_field_a_site_sends() -> None:
    design = (REPO / "DESIGN.md").read_text()
    section = design.split("## What a site sends", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`meta\[\"([a-z_0-9]+)\"\]`", section))

    assert listed == PLAIN_META | RELEASED_META
    for field in ("round", "update", "num_examples", "metrics"):
        assert f"`{field}`" in section
