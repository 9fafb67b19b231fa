"""The MIL task (task.name mil), written on the public task API: its networks, its batches and its metrics, and
what the shared training loop does for it (FedBN, FedProx, SCAFFOLD, DP-SGD)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from confide.config import DataConfig
from confide.errors import ConfigError, TaskError
from confide.kinds.mil.config import MilTaskConfig, SyntheticSlidesSpec
from confide.kinds.mil.metrics import slide_metrics
from confide.kinds.mil.model import build_mil_model, pack, tile_scores
from confide.kinds.mil.slides import SlideSet, read_site, split_by_patient, write_synthetic_slides
from confide.privacy.config import DpSgdSpec
from confide.records import Arrays
from confide.strategies.controls import with_controls
from confide.tasks.local_rules import norm_state_names
from confide.tasks.torch_io import load_arrays
from confide.workloads.kind import KindWorkload, TorchSiteTask
from confide.workloads.registry import make_workload

DIM = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> tuple[SlideSet, SlideSet]:
    root = tmp_path_factory.mktemp("slides")
    write_synthetic_slides(root, 1, 60, 80, DIM, seed=0, signal=5.0)
    return split_by_patient(read_site(root / "site-1").bags, 0.4, seed=0, site="site-1")


def _workload(config: MilTaskConfig) -> KindWorkload:
    workload = make_workload(config.model_copy(update={"dim": config.dim or DIM, "device": "cpu"}))
    assert isinstance(workload, KindWorkload)
    return workload


def _task(
    config: MilTaskConfig, train: SlideSet | None, test: SlideSet | None, dp: DpSgdSpec | None = None
) -> TorchSiteTask:
    return _workload(config).task(train, test, site="site-1", seed=0, dp_sgd=dp)


def _initial(config: MilTaskConfig, seed: int = 0) -> Arrays:
    return _workload(config).initial(seed)


def _scores_of(task: TorchSiteTask, arrays: Arrays, bag: object, cls: int | None = None) -> np.ndarray:
    load_arrays(task.model, task.personal(arrays))
    return tile_scores(task.model, bag, cls)  # type: ignore[arg-type]


def _after(start: Arrays, update: Arrays) -> Arrays:
    return Arrays.from_dict({name: start[name] + update[name] for name in start.names()})


@pytest.mark.parametrize(("pooling", "steps"), [("attention", 150), ("topk", 200)])
def test_both_poolings_learn_the_tumour_signal_and_point_at_its_tiles(
    slides: tuple[SlideSet, SlideSet], pooling: str, steps: int
) -> None:
    train, test = slides
    config = MilTaskConfig(pooling=pooling)
    task = _task(config, train, test)
    start = _initial(config)
    before = task.score(start, test)

    res = task.train(start, {"local_steps": steps, "lr": 3e-3}, round=1)
    trained = _after(start, res.update)
    scores = task.score(trained, test)

    assert scores["balanced_accuracy"] >= 0.75 and scores["auc"] >= 0.85, (before, scores)
    positives = [bag for bag in test.bags if bag.label == 1]
    tumour, other = [], []
    for bag in positives:
        assert bag.tumour is not None
        values = _scores_of(task, trained, bag, cls=1)
        tumour.append(values[bag.tumour].mean())
        other.append(values[~bag.tumour].mean())
    if pooling == "attention":  # weights: a slide's tumour tiles (5-15 % of them) draw most of its attention
        mass = [_scores_of(task, trained, b)[b.tumour].sum() for b in positives]
        assert np.mean(mass) > 0.5
        assert np.mean(tumour) > 5 * np.mean(other)
    else:
        assert np.mean(tumour) > np.mean(other) + 1.0


@pytest.mark.parametrize("pooling", ["attention", "topk"])
def test_padding_never_changes_a_slides_output(slides: tuple[SlideSet, SlideSet], pooling: str) -> None:
    small, large = sorted(slides[0].bags[:6], key=len)[0], sorted(slides[0].bags[:6], key=len)[-1]
    assert len(small) + 5 < len(large)
    config = MilTaskConfig(pooling=pooling, top_k=len(small) + 5, dim=DIM)  # more than it has
    model = build_mil_model(config, DIM)
    load_arrays(model, _initial(config, seed=1))
    model.eval()

    with torch.no_grad():
        alone = model(pack([torch.from_numpy(small.features)]))
        padded = model(pack([torch.from_numpy(small.features), torch.from_numpy(large.features)]))

    torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-5)


def test_slide_metrics_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    p1 = np.clip(0.3 * labels + rng.uniform(0, 0.7, 40), 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)

    out = slide_metrics(labels, probs)

    assert out["auc"] == pytest.approx(roc_auc_score(labels, p1))
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, probs.argmax(1)))
    assert np.isnan(slide_metrics(np.ones(3, dtype=int), probs[:3])["auc"])


def test_fedbn_keeps_the_sites_norm_layers_and_scores_with_them(slides: tuple[SlideSet, SlideSet]) -> None:
    train, test = slides
    config = MilTaskConfig(norm="batch")
    task = _task(config, train, test)
    start = _initial(config)
    norms = norm_state_names(task.model)
    assert "encoder.norm.running_mean" in norms

    res = task.train(start, {"local_steps": 5, "keep_local_norm": True}, round=1)

    assert all(not np.any(res.update[name]) for name in norms)
    assert any(np.any(res.update[name]) for name in start.names() if name not in norms)
    assert task.memory.norms is not None
    mine = task.personal(start)
    assert not np.allclose(mine["encoder.norm.running_mean"], start["encoder.norm.running_mean"])
    fresh = _task(config, None, None)
    np.testing.assert_allclose(
        [task.score(start, test)[k] for k in ("auc", "accuracy")],
        [fresh.score(mine, test)[k] for k in ("auc", "accuracy")],
        rtol=1e-6,
    )


def test_the_proximal_term_holds_the_update_near_the_global_model(slides: tuple[SlideSet, SlideSet]) -> None:
    config = MilTaskConfig()
    start = _initial(config)

    def moved(mu: float) -> float:
        task = _task(config, slides[0], None)
        res = task.train(start, {"local_steps": 30, "lr": 1e-2, "proximal_mu": mu}, round=1)
        return float(np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in res.update.values())))

    assert moved(10.0) < 0.5 * moved(0.0)


def test_scaffold_controls_are_accepted_and_returned(slides: tuple[SlideSet, SlideSet]) -> None:
    config = MilTaskConfig(pooling="topk")
    task = _task(config, slides[0], slides[1])
    start = with_controls(_initial(config))

    res = task.train(start, {"local_steps": 3, "lr": 1e-3}, round=1)

    assert any(name.startswith("scaffold.c/") for name in res.update.names())
    assert set(task.score(start, slides[1])) == {"accuracy", "balanced_accuracy", "auc", "loss"}


@pytest.mark.parametrize("pooling", ["attention", "topk"])
def test_dp_sgd_takes_each_slides_own_gradient_through_the_padding(
    slides: tuple[SlideSet, SlideSet], pooling: str
) -> None:
    config = MilTaskConfig(pooling=pooling, dropout=0.0, top_k=3)
    task = _task(config, slides[0], None, DpSgdSpec(noise_multiplier=1.0, clip=1.0))
    bags = list(slides[0].bags[:3])
    x = pack([torch.from_numpy(b.features) for b in bags])
    y = torch.tensor([b.label for b in bags])
    assert task.dp is not None

    torch.nn.functional.cross_entropy(task.dp.module(x), y).backward()
    per_slide = {n: p.grad_sample.clone() for n, p in task.model.named_parameters()}
    for i, bag in enumerate(bags):
        task.model.zero_grad()
        for p in task.model.parameters():
            p.grad_sample = None
        alone = task.model(pack([torch.from_numpy(bag.features)]))
        torch.nn.functional.cross_entropy(alone, y[i : i + 1]).backward()
        for name, p in task.model.named_parameters():
            torch.testing.assert_close(per_slide[name][i], p.grad, rtol=1e-4, atol=1e-6)

    (spend,) = task.privacy_spend({"local_steps": 4, "batch_size": 6})
    assert spend.sampling_rate == pytest.approx(6 / len(slides[0])) and spend.steps == 4
    res = task.train(_initial(config), {"local_steps": 4, "batch_size": 6, "proximal_mu": 0.1}, round=1)
    assert all(np.isfinite(v).all() for v in res.update.values())


def test_dp_sgd_refuses_batchnorm_with_the_reason(slides: tuple[SlideSet, SlideSet]) -> None:
    with pytest.raises(TaskError, match=r"BatchNorm.*mil: norm layer"):
        _task(MilTaskConfig(norm="batch"), slides[0], None, DpSgdSpec(noise_multiplier=1.0, clip=1.0))


def test_the_workload_generates_reads_and_learns_the_dimension(tmp_path: Path) -> None:
    config = MilTaskConfig(synthetic=SyntheticSlidesSpec(sites=2, slides=12, tiles=20, dim=8))
    data = DataConfig(root=tmp_path / "slides", test_fraction=0.25)
    workload = make_workload(config)
    messages: list[str] = []

    splits = workload.load_sites(data, seed=0, progress=messages.append)
    again = make_workload(MilTaskConfig(dim=8)).load_site(data, 0, tmp_path / "slides" / "site-2", "site-2")

    assert [s.name for s in splits] == ["site-1", "site-2"] and messages
    assert isinstance(workload, KindWorkload) and workload.fields.dim == 8  # type: ignore[attr-defined]
    assert all(workload.size(s.train) + workload.size(s.test) == 12 for s in splits)
    assert [b.slide for b in again.test.bags] == [b.slide for b in splits[1].test.bags]
    task = workload.task(splits[0].train, splits[0].test, site="site-1", seed=0, dp_sgd=None)
    initial = workload.initial(seed=0)
    assert task.train(initial, {"local_steps": 1}, round=1).num_examples == len(splits[0].train)
    pooled = workload.pool([s.test for s in splits])
    assert set(task.score(initial, pooled)) >= set(workload.metric_keys) and workload.metric in workload.metric_keys
    assert workload.norm_names() == {"encoder.norm.weight", "encoder.norm.bias"}


def test_the_workload_needs_the_dimension_before_the_initial_model() -> None:
    with pytest.raises(ConfigError, match=r"task\.dim"):
        make_workload(MilTaskConfig()).initial(seed=0)

    assert make_workload(MilTaskConfig(dim=32)).initial(seed=0)["encoder.linear.weight"].shape == (64, 32)
