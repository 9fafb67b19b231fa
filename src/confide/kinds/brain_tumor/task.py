"""3D brain-tumour segmentation (``task.name: brain_tumor``), written on the public task API.

A site's folder holds BraTS case folders (:mod:`confide.kinds.brain_tumor.brats`), each prepared onto the job's ROI
(:mod:`confide.kinds.brain_tumor.preprocess`) and split into train and test by the job's seed. Training batches are
flipped along random axes (drawn from the job-seeded generator of the round) when ``augment`` is on; the loss is
Dice plus binary cross-entropy on the three overlapping regions WT, TC and ET; a model is scored by the mean over
cases of each region's Dice. In a simulation, :func:`prepare` generates phantoms into ``data.root`` when the task
asks for them and the folder does not exist yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss

from confide.api import Place, SiteData, TaskKind, device_of
from confide.errors import DataError
from confide.kinds.brain_tumor.config import BrainTumorTaskConfig
from confide.kinds.brain_tumor.federation import load_site
from confide.kinds.brain_tumor.metrics import REGIONS, region_dice
from confide.kinds.brain_tumor.model import SegData, build_model
from confide.kinds.brain_tumor.phantom_writer import write_federation
from confide.kinds.brain_tumor.predict import model_io, outputs, preprocessing
from confide.kinds.brain_tumor.predict import predict as predict_cases
from confide.kinds.brain_tumor.preprocess import PreprocessConfig

METRICS = ("dice_mean", *(f"dice_{r}" for r in REGIONS))  # the headline first
EVAL_BATCH = 4


def prepare(config: BrainTumorTaskConfig, root: Path) -> BrainTumorTaskConfig:
    """Phantoms written into ``root`` when the task asks for them and it does not exist yet."""
    spec = config.phantoms
    if spec is not None and not root.exists():
        write_federation(root, spec.sites, spec.cases, spec.seed)
    return config


def read(config: BrainTumorTaskConfig, place: Place) -> SiteData:
    """One site's BraTS cases, prepared onto the ROI and split; unusable cases skipped with the reason."""
    site = load_site(
        place.folder,
        PreprocessConfig(roi=config.roi),
        test_fraction=place.test_fraction,
        seed=place.seed,
        max_cases=place.max_cases,
        on_bad_case="stop" if place.on_bad_case == "stop" else "skip",
        on_case=lambda site, case: place.progress(f"{site} {case}"),
    )
    if not site.train:
        raise DataError(f"site {place.site}: no usable training case in {place.folder}")
    train = SegData.from_cases(site.train)
    test = SegData.from_cases(site.test) if site.test else None
    notes = tuple(f"{what}: {tumour_burden(data)}" for what, data in (("training", train), ("test", test)) if data)
    return SiteData(train, test, notes, tuple((p.case_id, p.reason) for p in site.problems))


def tumour_burden(data: SegData) -> str:
    """What a split's labels hold, for the report: the whole tumour's size (share of the prepared volume, median and
    range over the cases) and how many cases have a tumour core and an enhancing tumour (the regions' mix differs
    between hospitals with their patients' grades)."""
    n = len(data)
    voxels = np.prod(data.regions.shape[2:])
    share = data.regions[:, 0].reshape(n, -1).sum(axis=1) / voxels * 100.0
    present = data.regions.reshape(n, len(REGIONS), -1).any(axis=2).sum(axis=0)
    return (
        f"{n} case(s), whole tumour {np.median(share):.1f} % of the volume (median; {share.min():.1f}-"
        f"{share.max():.1f}), tumour core in {present[1]}/{n}, enhancing tumour in {present[2]}/{n}"
    )


def collate(config: BrainTumorTaskConfig, cases: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    return torch.stack([image for image, _ in cases]), torch.stack([regions for _, regions in cases])


def augment(config: BrainTumorTaskConfig, batch: Any, generator: torch.Generator) -> Any:
    """Each spatial axis flipped with probability 1/2 (the same flips for the whole batch)."""
    if not config.augment:
        return batch
    x, y = batch
    flips = [axis for axis in (2, 3, 4) if torch.rand(1, generator=generator).item() < 0.5]
    return (torch.flip(x, flips), torch.flip(y, flips)) if flips else (x, y)


@cache
def _dice_ce() -> DiceCELoss:
    return DiceCELoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)


def loss(config: BrainTumorTaskConfig, model: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    value: torch.Tensor = _dice_ce()(model(x), y)
    return value


def predict(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Boolean region masks (N, 3, *roi) for images (N, 4, *roi)."""
    device = device_of(model)
    out = []
    for start in range(0, images.shape[0], EVAL_BATCH):
        logits = model(torch.from_numpy(images[start : start + EVAL_BATCH]).to(device))
        out.append((logits > 0).cpu().numpy())
    return np.concatenate(out)


def evaluate(config: BrainTumorTaskConfig, model: torch.nn.Module, data: SegData) -> dict[str, float]:
    """The mean over cases of each region's Dice and of their mean; ``loss`` is 1 - mean Dice."""
    pred = predict(model, data.images)
    per_case = [region_dice(pred[i], data.regions[i]) for i in range(len(data))]
    scores = {key: float(np.mean([case[key] for case in per_case])) for key in per_case[0]}
    return {**scores, "loss": 1.0 - scores["dice_mean"]}


def pool(config: BrainTumorTaskConfig, parts: Sequence[Any]) -> SegData:
    return SegData.concat(list(parts))


def brain_tumor_kind(config: BrainTumorTaskConfig) -> TaskKind[BrainTumorTaskConfig]:
    return TaskKind(
        fields=BrainTumorTaskConfig,
        read_site=read,
        build_model=build_model,
        evaluate=evaluate,
        metrics=METRICS,
        loss=loss,
        collate=collate,
        augment=augment,
        pool=pool,
        prepare=prepare,
        model_io=model_io,
        preprocessing=preprocessing,
        predict=predict_cases,
        outputs=outputs,
        describe=f"3D brain-tumour segmentation, model {config.model} (init_filters {config.init_filters}), "
        f"ROI {list(config.roi)}",
    )
