"""Slide-level classification from bags of tile features (``task.name: mil``), written on the public task API.

A site's folder holds ``labels.csv`` and one feature file per slide (:mod:`confide.kinds.mil.slides`); its slides
are split by patient. A training batch draws at most ``max_tiles`` tiles of each slide (from torch's generator,
seeded per site and round) and pads the slides to one tensor whose last channel marks the real tiles
(:func:`confide.kinds.mil.model.pack`). In a simulation, :func:`prepare` writes the synthetic slides the job asks
for and learns the feature dimension from the first slide it finds; a deployment's server reads no slides, so the
job must give ``dim`` there. Using the model after the job (``model_io``, ``preprocessing``, ``predict``,
``outputs``): :mod:`confide.kinds.mil.predict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from confide.api import Place, SiteData, TaskKind
from confide.errors import CaseError, ConfigError, DataError
from confide.kinds.mil.config import MilTaskConfig
from confide.kinds.mil.metrics import slide_metrics
from confide.kinds.mil.model import build_mil_model, pack
from confide.kinds.mil.predict import HEADLINE, model_io, outputs, predict, preprocessing, probabilities
from confide.kinds.mil.slides import (
    OnBad,
    SlideBag,
    SlideSet,
    feature_file,
    read_bag,
    read_labels,
    read_site,
    split_by_patient,
    write_synthetic_slides,
)

LABELS = "labels.csv"


def _site_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    found = sorted(p for p in root.iterdir() if (p / LABELS).is_file() and not p.name.startswith("."))
    if not found:
        raise DataError(f"no site folders under {root}: expected <site>/{LABELS} and <site>/features/")
    return found


def site_names(config: MilTaskConfig, root: Path) -> list[str]:
    """Every sub-folder of ``root`` that holds a labels.csv."""
    return [folder.name for folder in _site_folders(root)]


def _first_dim(folder: Path, classes: int) -> int | None:
    """The feature dimension of the first readable slide of a site folder."""
    rows, _ = read_labels(folder, classes=classes, on_bad="skip")
    for slide, label, patient in rows:
        path = feature_file(folder, slide)
        if path is None:
            continue
        try:
            return read_bag(path, slide=slide, label=label, patient=patient).dim
        except CaseError:
            continue
    return None


def prepare(config: MilTaskConfig, root: Path) -> MilTaskConfig:
    """In a simulation: the synthetic slides written when the job asks for them and ``root`` does not exist yet,
    and the feature dimension, when the job does not give it, that most sites' first slide has."""
    spec = config.synthetic
    if spec is not None and not root.exists():
        write_synthetic_slides(root, spec.sites, spec.slides, spec.tiles, spec.dim, spec.seed, fmt=spec.format)
    if config.dim is not None:
        return config
    dims = [d for d in (_first_dim(folder, config.classes) for folder in _site_folders(root)) if d is not None]
    if not dims:
        raise DataError(f"no readable slide under {root}: cannot learn the tile feature dimension (task.dim)")
    return config.model_copy(update={"dim": min(set(dims), key=lambda d: (-dims.count(d), d))})


def read(config: MilTaskConfig, place: Place) -> SiteData:
    """One site's slides, split by patient; slides of another feature dimension than the model's are skipped."""
    dim = _need_dim(config)
    bad: OnBad = "stop" if place.on_bad_case == "stop" else "skip"
    site = read_site(
        place.folder,
        name=place.site,
        classes=config.classes,
        dim=dim,
        max_slides=place.max_cases,
        seed=place.seed,
        on_bad_case=bad,
    )
    train, test = split_by_patient(site.bags, place.test_fraction, place.seed, site.name)
    labels = np.array([bag.label for bag in site.bags])
    counts = ", ".join(f"class {c}: {int((labels == c).sum())}" for c in range(config.classes))
    tiles = np.mean([len(bag) for bag in site.bags]) if site.bags else 0.0
    patients = len({bag.patient for bag in site.bags})
    note = (
        f"{len(site.bags)} slides of {patients} patients ({counts}), {tiles:.0f} tiles per slide on average, "
        f"feature dimension {dim}"
    )
    return SiteData(train, test, (note,), tuple((s.item, s.reason) for s in site.skipped))


def _need_dim(config: MilTaskConfig) -> int:
    if config.dim is None:
        raise ConfigError(
            "task.dim: the MIL model's input size is the tile feature dimension, learnt when the slides are read; "
            "none were read yet (a deployment's server reads none): set task.dim in the job file"
        )
    return config.dim


def build_model(config: MilTaskConfig) -> nn.Module:
    return build_mil_model(config, _need_dim(config))


def collate(config: MilTaskConfig, bags: list[SlideBag]) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch: at most ``max_tiles`` tiles of each slide (drawn from torch's generator), padded."""
    tensors = []
    for bag in bags:
        features = torch.from_numpy(bag.features)
        if len(bag) > config.max_tiles:
            features = features[torch.randperm(len(bag))[: config.max_tiles]]
        tensors.append(features)
    x = pack(tensors) if tensors else torch.zeros(0, 1, _need_dim(config) + 1)
    return x, torch.tensor([bag.label for bag in bags], dtype=torch.long)


def evaluate(config: MilTaskConfig, model: nn.Module, data: SlideSet) -> dict[str, float]:
    probs = probabilities(model, data.bags)
    labels = data.labels()
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))
    return {**slide_metrics(labels, probs), "loss": loss}


def pool(config: MilTaskConfig, parts: Sequence[Any]) -> SlideSet:
    return SlideSet.concat(list(parts))


def metric_keys(config: MilTaskConfig) -> tuple[str, ...]:
    return (HEADLINE, "auc", "accuracy") if config.classes == 2 else (HEADLINE, "accuracy")


def mil_kind(config: MilTaskConfig) -> TaskKind[MilTaskConfig]:
    """The MIL task for ``config`` (its metrics depend on the number of classes)."""
    dim = config.dim if config.dim is not None else "read from the slides"
    return TaskKind(
        fields=MilTaskConfig,
        read_site=read,
        build_model=build_model,
        evaluate=evaluate,
        metrics=metric_keys(config),
        collate=collate,
        pool=pool,
        sites=site_names,
        prepare=prepare,
        model_io=model_io,
        preprocessing=preprocessing,
        predict=predict,
        outputs=outputs,
        describe=f"slide classification from tile features (MIL, {config.pooling} pooling, hidden {config.hidden}, "
        f"{config.norm} norm), feature dimension {dim}, {config.classes} classes",
    )
