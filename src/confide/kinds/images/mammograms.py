"""Generated mammogram-like images with a density label, for tests and the privacy audit (no patient in them).

Each image is a breast seen from the side: a half-ellipse against the chest wall (left or right, as both
lateralities occur), dark background, a smooth fibroglandular texture whose brightness fades towards the nipple,
and one to three bright dense blobs. The label follows how much dense tissue the breast holds (F fatty, G
fatty-glandular, D dense-glandular, by thirds of the generated distribution). :func:`write_mammo_sites` writes them
as 8-bit PNGs in the folder layout the image task reads (``<site>/labels.csv`` and the images; classes F, G, D).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

DENSITY = ("F", "G", "D")


def synthetic_mammogram(side: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """One image (side, side) float32 in [0, 1] and its density class (0 F, 1 G, 2 D)."""
    if side < 8:
        raise ValueError(f"a generated mammogram needs a side of at least 8 pixels, got {side}")
    yy, xx = np.mgrid[0:side, 0:side] / side
    x = xx if rng.random() < 0.5 else 1.0 - xx  # distance from the chest wall
    centre, depth, height = 0.5 + rng.normal(0, 0.08), rng.uniform(0.5, 0.95), rng.uniform(0.3, 0.55)
    breast = ((x / depth) ** 2 + ((yy - centre) / height) ** 2) < 1
    texture = gaussian_filter(rng.normal(size=(side, side)), side / 12)
    texture = (texture - texture.min()) / (float(np.ptp(texture)) + 1e-9)
    density = rng.uniform(0.0, 1.0)
    image = breast * (0.2 + 0.3 * density + 0.4 * texture) * np.clip(1.3 - x / depth, 0, 1)
    for _ in range(int(rng.integers(1, 4))):
        row, depth_at = rng.uniform(0.25, 0.75), rng.uniform(0.05, 0.5) * depth
        width = rng.uniform(0.03, 0.08)
        image = image + rng.uniform(0.2, 0.5) * breast * np.exp(
            -((yy - row) ** 2 + (x - depth_at) ** 2) / (2 * width**2)
        )
    return np.clip(image, 0.0, 1.0).astype(np.float32), min(2, int(density * 3))


def write_mammo_sites(root: Path, sites: int, images: int, side: int, seed: int) -> list[Path]:
    """``sites`` folders under ``root`` (``site-1``, ...), each with ``images`` PNGs and their ``labels.csv``
    (``file,label,patient``, one patient per image)."""
    if sites < 1 or images < 1:
        raise ValueError(f"need at least one site and one image, got {sites}, {images}")
    rng = np.random.default_rng(seed)
    folders = []
    for k in range(sites):
        folder = root / f"site-{k + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "labels.csv", "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(("file", "label", "patient"))
            for i in range(images):
                pixels, label = synthetic_mammogram(side, rng)
                name = f"img{i:04d}.png"
                Image.fromarray(np.round(pixels * 255).astype(np.uint8), mode="L").save(folder / name)
                writer.writerow((name, DENSITY[label], f"s{k + 1}p{i:04d}"))
        folders.append(folder)
    return folders
