"""3D brain-tumour segmentation (BraTS regions WT, TC, ET) with MONAI's SegResNet or UNet.

Inputs are four modalities (t1, t1c, t2, flair) fitted to a fixed ROI by
:mod:`confide.data.preprocess`; targets are the three overlapping regions, predicted with one
sigmoid channel each and trained with Dice + binary cross-entropy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import SegResNet, UNet

from confide.data.brats import labels_to_regions
from confide.data.preprocess import PreparedCase
from confide.errors import DataError, TaskError
from confide.privacy.config import DpSgdSpec
from confide.privacy.spend import Spend
from confide.records import Arrays, Config, EvalRes, TrainRes
from confide.tasks.brain_tumor_config import BrainTumorTaskConfig
from confide.tasks.dp_sgd import DpSgd
from confide.tasks.local_rules import SiteMemory
from confide.tasks.loop import seed_of, train_locally
from confide.tasks.seg_metrics import REGIONS, region_dice
from confide.tasks.torch_io import load_arrays, module_arrays


@dataclass(frozen=True)
class SegData:
    """A site's cases in memory: images (N, 4, *roi) float32 and regions (N, 3, *roi) bool."""

    images: np.ndarray
    regions: np.ndarray
    case_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.ndim != 5 or self.images.shape[1] != 4:
            raise DataError(f"images must be (N, 4, D, H, W), got {self.images.shape}")
        if self.regions.shape != (self.images.shape[0], len(REGIONS), *self.images.shape[2:]):
            raise DataError(f"regions {self.regions.shape} do not match images {self.images.shape}")
        if len(self.case_ids) != self.images.shape[0]:
            raise DataError("one case id per case is required")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @classmethod
    def from_cases(cls, cases: Sequence[PreparedCase]) -> SegData:
        if not cases:
            raise DataError("no cases given")
        for case in cases:
            if case.label is None:
                raise DataError(f"case {case.case_id} has no segmentation; training and evaluation need one")
        images = np.stack([case.image for case in cases]).astype(np.float32, copy=False)
        regions = np.stack([labels_to_regions(case.label, case.enhancing_label) for case in cases])  # type: ignore[arg-type]
        return cls(images=images, regions=regions, case_ids=tuple(case.case_id for case in cases))

    @classmethod
    def concat(cls, parts: Sequence[SegData]) -> SegData:
        return cls(
            images=np.concatenate([p.images for p in parts]),
            regions=np.concatenate([p.regions for p in parts]),
            case_ids=tuple(cid for p in parts for cid in p.case_ids),
        )


def build_model(config: BrainTumorTaskConfig) -> torch.nn.Module:
    f = config.init_filters
    if config.model == "segresnet":
        groups = math.gcd(f, 8)  # GroupNorm needs groups dividing every level's channels
        return SegResNet(
            spatial_dims=3,
            in_channels=4,
            out_channels=len(REGIONS),
            init_filters=f,
            norm=("GROUP", {"num_groups": groups}),
        )
    return UNet(
        spatial_dims=3,
        in_channels=4,
        out_channels=len(REGIONS),
        channels=(f, 2 * f, 4 * f, 8 * f),
        strides=(2, 2, 2),
        num_res_units=1,
    )


def initial_arrays(config: BrainTumorTaskConfig, seed: int) -> Arrays:
    """The untrained global model, identical for the same config and seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return module_arrays(build_model(config))


class BrainTumorTask:
    """One site's brain-tumour task: its training and test cases and a reusable network."""

    def __init__(
        self,
        config: BrainTumorTaskConfig,
        train: SegData | None,
        test: SegData | None,
        *,
        site: str,
        seed: int = 0,
        dp_sgd: DpSgdSpec | None = None,
    ) -> None:
        self.config = config
        self.train_data = train
        self.test_data = test
        self.site = site
        self.seed = seed
        self.model = build_model(config)
        self.loss_fn = DiceCELoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)
        self.dp = (
            None if dp_sgd is None else DpSgd(self.model, clip=dp_sgd.clip, noise_multiplier=dp_sgd.noise_multiplier)
        )
        self.memory = SiteMemory()

    def personal(self, arrays: Arrays) -> Arrays:
        """The global model as this site uses it (its own normalisation layers under FedBN)."""
        return self.memory.personal(arrays)

    def privacy_spend(self, config: Config) -> list[Spend]:
        """What a round of training spends on the site's patients (DP-SGD), for the ledger to check first."""
        if self.dp is None or self.train_data is None or len(self.train_data) == 0:
            return []
        steps = int(config.get("local_steps", 1))
        return [self.dp.spend(self._sampling_rate(config), steps)]

    def _sampling_rate(self, config: Config) -> float:
        n = len(self.train_data) if self.train_data is not None else 1
        return min(1.0, int(config.get("batch_size", self.config.batch_size)) / max(n, 1))

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        data = self.train_data
        if data is None or len(data) == 0:
            raise TaskError(f"site {self.site} has no training cases")
        images = torch.from_numpy(data.images)
        targets = torch.from_numpy(data.regions)

        def fetch(idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = images[idx], targets[idx].float()
            if self.config.augment:
                flips = [axis for axis in (2, 3, 4) if torch.rand(1, generator=gen).item() < 0.5]
                if flips:
                    x, y = torch.flip(x, flips), torch.flip(y, flips)
            return x, y

        return train_locally(
            self.model,
            arrays,
            config,
            self.memory,
            n=len(data),
            fetch=fetch,
            loss=lambda module, batch: self.loss_fn(module(batch[0]), batch[1]),
            generator=torch.Generator().manual_seed(seed_of(self.seed, self.site, round, "train")),
            dp=self.dp,
            round=round,
            where=f"site {self.site}",
            lr=self.config.lr,
            batch_size=self.config.batch_size,
        )

    @torch.no_grad()
    def predict(self, arrays: Arrays, images: np.ndarray) -> np.ndarray:
        """Boolean region masks (N, 3, *roi) for images (N, 4, *roi)."""
        load_arrays(self.model, self.memory.personal(arrays))
        self.model.eval()
        out = []
        for start in range(0, images.shape[0], 4):
            logits = self.model(torch.from_numpy(images[start : start + 4]))
            out.append((logits > 0).numpy())
        return np.concatenate(out)

    def evaluate(self, arrays: Arrays, config: Config, round: int) -> EvalRes:
        data = self.test_data
        if data is None or len(data) == 0:
            raise TaskError(f"site {self.site} has no test cases")
        scores = self.score(arrays, data)
        return EvalRes(round=round, num_examples=len(data), loss=1.0 - scores["dice_mean"], metrics=scores)

    def score(self, arrays: Arrays, data: SegData) -> dict[str, float]:
        """Mean over cases of the Dice of each region (and their mean) on ``data``."""
        pred = self.predict(arrays, data.images)
        per_case = [region_dice(pred[i], data.regions[i]) for i in range(len(data))]
        return {key: float(np.mean([case[key] for case in per_case])) for key in per_case[0]}
