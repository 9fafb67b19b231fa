"""The brain-tumour workload: BraTS folders (one per site) or generated phantoms, SegResNet/UNet, Dice per region."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from confide.config import BrainTumorTaskConfig, DataConfig
from confide.data.federation import SiteCases, load_site, site_folders
from confide.data.phantom_writer import write_federation
from confide.data.preprocess import PreprocessConfig
from confide.privacy.config import DpSgdSpec
from confide.records import Arrays
from confide.tasks.brain_tumor import BrainTumorTask, SegData, build_model, initial_arrays
from confide.tasks.local_rules import norm_state_names
from confide.tasks.seg_metrics import REGIONS
from confide.workloads.base import Progress, SiteSplit, Skipped


def _split(site: SiteCases) -> SiteSplit:
    return SiteSplit(
        name=site.name,
        train=SegData.from_cases(site.train),
        test=SegData.from_cases(site.test),
        skipped=tuple(Skipped(p.case_id, p.reason) for p in site.problems),
    )


class BrainTumorWorkload:
    metric = "dice_mean"
    metric_keys = (*(f"dice_{r}" for r in REGIONS), "dice_mean")

    def __init__(self, config: BrainTumorTaskConfig) -> None:
        self.config = config

    def _load(self, folder: Path, data: DataConfig, seed: int, progress: Progress | None = None) -> SiteSplit:
        return _split(
            load_site(
                folder,
                PreprocessConfig(roi=self.config.roi),
                test_fraction=data.test_fraction,
                seed=seed,
                max_cases=data.max_cases_per_site,
                on_bad_case=data.on_bad_case,
                on_case=None if progress is None else (lambda site, case: progress(f"{site} {case}")),
            )
        )

    def load_sites(self, data: DataConfig, seed: int, progress: Progress) -> list[SiteSplit]:
        if data.phantoms is not None and not data.root.exists():
            spec = data.phantoms
            write_federation(data.root, spec.sites, spec.cases, seed, on_case=lambda s, c: progress(f"phantom {s} {c}"))
        return [self._load(folder, data, seed, progress) for folder in site_folders(data.root, data.sites)]

    def load_site(self, data: DataConfig, seed: int, root: Path, name: str) -> SiteSplit:
        return self._load(root, data, seed)

    def pool(self, parts: Sequence[Any]) -> SegData:
        return SegData.concat(list(parts))

    def size(self, split: Any) -> int:
        return len(split)

    def task(self, train: Any, test: Any, *, site: str, seed: int, dp_sgd: DpSgdSpec | None) -> BrainTumorTask:
        return BrainTumorTask(self.config, train, test, site=site, seed=seed, dp_sgd=dp_sgd)

    def initial(self, seed: int) -> Arrays:
        return initial_arrays(self.config, seed)

    def norm_names(self) -> frozenset[str]:
        with torch.random.fork_rng(devices=[]):
            return norm_state_names(build_model(self.config))

    def batch_size(self) -> int:
        return self.config.batch_size

    def lr(self) -> float:
        return self.config.lr

    def describe(self) -> str:
        c = self.config
        return f"3D brain-tumour segmentation, model {c.model} (init_filters {c.init_filters}), ROI {list(c.roi)}"
