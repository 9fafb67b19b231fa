"""The audit's data, read through the workloads as a job reads it: generated without ``--data``, real with it.

Images: without ``--data``, generated mammograms (:mod:`confide.kinds.images.mammograms`) written as one site folder
under ``OUT/data``; with it, MIAS (a folder with ``Info.txt``) or a folder of site folders (``labels.csv`` and
images), read by the image task (classes F, G, D). Every site's training and test images together form the pool
that trials draw from.

Tables: without ``--data``, a generated table (:mod:`confide.kinds.tables.synthetic`) in ``OUT/data/table.csv``; with
it, the UCI heart-disease CSV (columns ``dataset`` and ``num``, as ``jobs/heart_disease.yaml`` reads it) or any CSV
with a ``site`` column and a binary ``y``. The audited site is the one with the most training rows; its training
rows, standardised as the site prepares them, are what it trains on besides the canaries.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from confide.audit.settings import AuditSettings
from confide.config import DataConfig
from confide.errors import DataError
from confide.kinds.images.config import ImageTaskConfig
from confide.kinds.images.dataset import ImageSet
from confide.kinds.images.labels import LABELS_FILE
from confide.kinds.images.mammograms import write_mammo_sites
from confide.kinds.images.mias import INFO, parse_info
from confide.kinds.tables.config import TableTaskConfig
from confide.kinds.tables.synthetic import synthetic_binary_table
from confide.workloads.base import SiteSplit, Workload
from confide.workloads.kind import KindWorkload
from confide.workloads.registry import make_workload

HEART_DROP = ("id", "slope", "ca", "thal")  # as jobs/heart_disease.yaml: most hospitals did not record them


def image_task_config(settings: AuditSettings) -> ImageTaskConfig:
    """The image task the audited site runs on mammograms (density F, G, D; raw grey pixels): a small CNN with
    GroupNorm (DP-SGD cannot train BatchNorm), one image per batch, no augmentation and no class weights (neither
    would change what one image's update shows), the pixels held as float32 as the attacker holds them."""
    s = settings.image
    return ImageTaskConfig(
        classes=("F", "G", "D"),
        ordinal=True,
        channels=1,
        image_size=s.image_size,
        model="small_cnn",
        width=s.width,
        blocks=s.blocks,
        norm="group",
        intensity="raw",
        lr=s.lr,
        batch_size=1,
        augment=False,
        class_weighted=False,
        storage="float32",
        device="cpu",
    )


@dataclass(frozen=True)
class ImagePool:
    """The images (as the site holds them, and as float32 pixels (N, 1, S, S) with their class indices for the
    attacker), and each one's patient: the attacker's public images never include the true image's patient (MIAS
    holds both breasts of a patient, which look alike)."""

    workload: KindWorkload
    images: ImageSet
    pixels: np.ndarray
    labels: np.ndarray
    patients: tuple[str, ...]
    source: str


def _patients(root: Path, splits: list[SiteSplit]) -> tuple[str, ...]:
    """The patient of every image of ``splits`` (train then test, site by site), as ``ImageSet.concat`` orders
    them: from MIAS's numbering (both films of a patient), or the ``patient`` column of a site's labels.csv."""
    if (root / INFO).is_file():
        records = parse_info(root / INFO)
        return tuple(
            records[i].patient if i in records else i for s in splits for part in (s.train, s.test) for i in part.files
        )
    out = []
    for split in splits:
        folder = root / split.name if (root / split.name).is_dir() else root
        named: dict[str, str] = {}
        with open(folder / LABELS_FILE, newline="") as handle:
            for row in csv.DictReader(handle):
                file = (row.get("file") or "").strip()
                named[file] = (row.get("patient") or "").strip() or file
        out += [f"{split.name}/{named.get(i, i)}" for part in (split.train, split.test) for i in part.files]
    return tuple(out)


def image_pool(settings: AuditSettings, data: Path | None, out: Path) -> ImagePool:
    """Every image the trials draw from (true images and the attacker's public ones alike)."""
    workload = make_workload(image_task_config(settings))
    assert isinstance(workload, KindWorkload)
    if data is None:
        root = out / "data" / "mammograms"
        write_mammo_sites(root, 1, settings.image.public, settings.image.image_size, settings.seed)
        source = f"{settings.image.public} generated mammograms ({root})"
    else:
        root = data
        source = f"images under {data}"
    if not root.exists():
        raise DataError(f"--data {root} does not exist")
    splits = workload.load_sites(DataConfig(root=root), settings.seed, lambda _: None)
    images = ImageSet.concat([part for split in splits for part in (split.train, split.test)])
    patients = _patients(root, splits)
    if len(images) < settings.image.candidates + 1:
        raise DataError(
            f"{source}: {len(images)} images, the audit needs more than {settings.image.candidates} (the candidates)"
        )
    pixels = images.images.to(torch.float32).numpy()
    return ImagePool(workload, images, pixels, images.labels.numpy(), patients, source)


@dataclass(frozen=True)
class SiteRows:
    workload: Workload
    rows: torch.utils.data.TensorDataset  # the audited site's training rows (x, y), as it prepared them
    site: str
    source: str


def _header(path: Path) -> list[str]:
    try:
        with open(path, newline="") as handle:
            return [c.strip() for c in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--data {path} cannot be read: {exc}") from None


def table_task_config(settings: AuditSettings, header: list[str]) -> TableTaskConfig:
    s = settings.table
    common = {"kind": "binary", "model": s.model, "hidden": s.hidden, "lr": s.lr, "batch_size": s.batch}
    if {"dataset", "num"} <= set(header):
        drop = [c for c in HEART_DROP if c in header]
        layout = {"site_column": "dataset", "target": "num", "positive_above": 0, "drop": drop}
        return TableTaskConfig.model_validate({**common, **layout})
    if {"site", "y"} <= set(header):
        return TableTaskConfig.model_validate({**common, "site_column": "site", "target": "y"})
    raise DataError(
        f"the table's columns {header[:12]} are neither the UCI heart-disease layout (dataset, num) nor a site "
        "column with a binary y"
    )


def site_rows(settings: AuditSettings, data: Path | None, out: Path) -> SiteRows:
    """The audited site's training rows (the site with the most of them)."""
    if data is None:
        path = out / "data" / "table.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        s = settings.table
        path.write_text(synthetic_binary_table(["generated"], s.rows, s.features, settings.seed))
        source = f"a generated table of {s.rows} rows and {s.features} features ({path})"
    else:
        path = data
        if not path.is_file():
            raise DataError(f"--data {path} is not a CSV file (the table audit reads one table)")
        source = f"the table {path}"
    workload = make_workload(table_task_config(settings, _header(path)))
    splits = workload.load_sites(DataConfig(root=path, test_fraction=1 / 3), settings.seed, lambda _: None)
    biggest = max(splits, key=lambda split: len(split.train))
    return SiteRows(workload, biggest.train, biggest.name, source)
