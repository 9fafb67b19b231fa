"""Patient-level DP: DP-SGD inside a site's training (per-case clipping and noise through Opacus)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from confide.config import BrainTumorTaskConfig
from confide.errors import TaskError
from confide.kinds.brain_tumor.model import SegData, build_model, initial_arrays
from confide.privacy.config import DpSgdSpec
from confide.tasks.dp_sgd import DpSgd
from tests.helpers import site_task_of

CONFIG = BrainTumorTaskConfig(roi=(16, 16, 16), init_filters=4, augment=False)


def _batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 16, 16, 16, generator=gen), (torch.rand(n, 3, 16, 16, 16, generator=gen) > 0.7).float()


def _cases(n: int) -> SegData:
    rng = np.random.default_rng(0)
    return SegData(
        images=rng.normal(size=(n, 4, 16, 16, 16)).astype(np.float32),
        regions=rng.random((n, 3, 16, 16, 16)) > 0.8,
        case_ids=tuple(f"c{i}" for i in range(n)),
    )


def _step(dp: DpSgd, model: torch.nn.Module, n: int, expected: float) -> torch.Tensor:
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    x, y = _batch(n)
    optimiser = torch.optim.SGD(model.parameters(), lr=1.0)
    loss = DiceCELoss(sigmoid=True)
    dp.step(lambda module: loss(module(x), y), n, expected_batch=expected, optimiser=optimiser)
    return before - torch.cat([p.detach().flatten() for p in model.parameters()])  # = the private gradient


def test_each_case_gradient_is_clipped_before_the_sum() -> None:
    model = build_model(CONFIG)
    dp = DpSgd(model, clip=0.01, noise_multiplier=1e-6)

    grad = _step(dp, model, n=3, expected=3.0)

    assert float(grad.norm()) <= 3 * 0.01 / 3.0 * (1 + 1e-3)  # three clipped cases over the expected batch
    assert float(grad.norm()) > 0.5 * 0.01  # real per-case gradients are far larger: the clip was active


def test_the_noise_has_the_documented_scale_even_for_an_empty_batch() -> None:
    model = build_model(CONFIG)
    dp = DpSgd(model, clip=0.5, noise_multiplier=2.0)

    grad = _step(dp, model, n=0, expected=4.0)

    assert float(grad.std()) == pytest.approx(2.0 * 0.5 / 4.0, rel=0.05)  # sigma C / (q n)


def test_a_model_with_batchnorm_is_refused_with_the_reason() -> None:
    model = UNet(spatial_dims=3, in_channels=4, out_channels=3, channels=(4, 8), strides=(2,), norm="batch")

    with pytest.raises(TaskError, match="BatchNorm"):
        DpSgd(model, clip=1.0, noise_multiplier=1.0)


def test_a_private_round_reports_its_spend_and_trains() -> None:
    data = _cases(8)
    task = site_task_of(CONFIG, data, None, site="s", dp_sgd=DpSgdSpec(noise_multiplier=1.0, clip=1.0))
    config = {"local_steps": 3, "batch_size": 2, "lr": 1e-3}

    (spend,) = task.privacy_spend(config)
    res = task.train(initial_arrays(CONFIG, 0), config, round=1)

    assert (spend.mechanism, spend.sampling_rate, spend.steps, spend.noise_multiplier) == ("dp-sgd", 0.25, 3, 1.0)
    assert all(np.isfinite(v).all() for v in res.update.values())  # type: ignore[union-attr]
    assert max(float(np.abs(v).max()) for v in res.update.values()) > 0  # type: ignore[union-attr]


def test_two_private_rounds_from_one_seed_differ_and_cannot_be_regenerated() -> None:
    """The attack of issue 10: whoever knows the job's seed, the site and the round re-ran DP-SGD and got the
    same 'noisy' update bit for bit. Now the sampling and the noise come from the OS CSPRNG."""
    data = _cases(6)
    spec = DpSgdSpec(noise_multiplier=1.0, clip=1.0)
    config = {"local_steps": 2, "batch_size": 2, "lr": 1e-3}
    first = site_task_of(CONFIG, data, None, site="s", seed=3, dp_sgd=spec)
    second = site_task_of(CONFIG, data, None, site="s", seed=3, dp_sgd=spec)  # the attacker's replay

    a = first.train(initial_arrays(CONFIG, 0), config, round=1).update
    b = second.train(initial_arrays(CONFIG, 0), config, round=1).update

    gap = max(float(np.abs(a[n] - b[n]).max()) for n in a.names())  # type: ignore[union-attr,index]
    assert gap > 1e-4


def test_without_privacy_a_round_is_reproducible_bit_for_bit() -> None:
    data = _cases(6)
    config = {"local_steps": 2, "batch_size": 2, "lr": 1e-3}
    first = site_task_of(CONFIG, data, None, site="s", seed=3)
    second = site_task_of(CONFIG, data, None, site="s", seed=3)

    a = first.train(initial_arrays(CONFIG, 0), config, round=1).update
    b = second.train(initial_arrays(CONFIG, 0), config, round=1).update

    assert all(np.array_equal(a[n], b[n]) for n in a.names())  # type: ignore[union-attr,index]
