"""A MedMNIST ``.npz`` (for example BreastMNIST) written as image site folders, keeping its official split.

The file holds ``train_images``, ``val_images``, ``test_images`` ((N, H, W) greyscale or (N, H, W, 3) colour,
uint8) and the matching ``*_labels`` ((N,) or (N, 1) class indices). Each image is dealt to one of ``sites`` sites
(a seeded shuffle of each official split, dealt in turn, so every site gets its share of each split) and written as
a PNG; each site's ``labels.csv`` gives ``file,label,split`` with the official split (train, val or test), so the
image task uses the benchmark's own test set as given. MedMNIST has no patient identifiers: each image stands
alone. Multi-label sets (ChestMNIST) are refused.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from confide.errors import DataError

SPLITS = ("train", "val", "test")


def _split_arrays(data: np.lib.npyio.NpzFile, split: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
    except KeyError:
        raise DataError(f"{path}: no {split}_images / {split}_labels (found {sorted(data.files)})") from None
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise DataError(f"{path}: {split}_labels has {labels.shape[1]} columns: a multi-label set, not classes")
    labels = labels.reshape(-1)
    if images.ndim not in (3, 4) or images.shape[0] != labels.shape[0]:
        raise DataError(f"{path}: {split}_images {images.shape} does not match {labels.shape[0]} labels")
    return images, labels.astype(np.int64)


def write_medmnist_sites(
    npz: Path, out: Path, *, sites: int = 3, seed: int = 0, names: Sequence[str] | None = None
) -> list[Path]:
    """Write ``out/site-1`` ... ``out/site-<sites>`` from ``npz`` (see the module docstring); ``names`` labels the
    class indices (default: the indices as text). Returns the site folders."""
    if sites < 1:
        raise DataError(f"sites must be at least 1, got {sites}")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} already holds files; write the sites into a new or empty folder")
    try:
        data = np.load(npz, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{npz} is not a readable .npz file: {exc}") from None
    rng = np.random.default_rng(seed)
    folders = [out / f"site-{s + 1}" for s in range(sites)]
    rows: list[list[list[str]]] = [[] for _ in range(sites)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    with data:
        for split in SPLITS:
            images, labels = _split_arrays(data, split, npz)
            if names is not None and labels.size and labels.max() >= len(names):
                raise DataError(f"{npz}: {split} label {int(labels.max())} has no name in {list(names)}")
            for turn, index in enumerate(rng.permutation(labels.shape[0])):
                site = turn % sites
                name = f"{split}_{index:05d}.png"
                Image.fromarray(np.asarray(images[index], dtype=np.uint8)).save(folders[site] / name)
                label = names[labels[index]] if names is not None else str(int(labels[index]))
                rows[site].append([name, label, split])
    for folder, site_rows in zip(folders, rows, strict=True):
        with open(folder / "labels.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "label", "split"])
            writer.writerows(sorted(site_rows))
    return folders
