"""The brain-tumour networks (MONAI's SegResNet or UNet) and a site's prepared cases in memory (SegData).

Inputs are four modalities (t1, t1c, t2, flair) fitted to a fixed ROI by
:mod:`confide.kinds.brain_tumor.preprocess`; targets are the three overlapping regions, predicted with one
sigmoid channel each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.networks.nets import SegResNet, UNet

from confide.errors import DataError
from confide.kinds.brain_tumor.brats import labels_to_regions
from confide.kinds.brain_tumor.config import BrainTumorTaskConfig
from confide.kinds.brain_tumor.metrics import REGIONS
from confide.kinds.brain_tumor.preprocess import PreparedCase
from confide.records import Arrays
from confide.tasks.torch_io import module_arrays
from confide.tasks.torch_seed import seeded


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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One case: its image (4, *roi) and its regions (3, *roi) as float."""
        return torch.from_numpy(self.images[index]), torch.from_numpy(self.regions[index]).float()

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
    """The untrained global model, identical for the same config and seed (as the workload builds it)."""
    with seeded(seed):
        return module_arrays(build_model(config))
