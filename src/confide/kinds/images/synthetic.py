"""Generated colour images with five ordinal grades, one folder per site, for trying the image task end to end.

Each image is a fundus-like photograph: a bright orange disc on black with darker edges, an optic disc (right or
left, by eye), a darker macula and a few vessels. Its grade (0 to 4) sets how many lesions it shows (about 0.4, 4, 9,
16 and 26 on average, drawn from a Poisson law so that neighbouring grades overlap) and how large they are: dark red
blots, and more and more bright yellow ones as the grade rises. Each patient has two images (right and left eye),
mostly of the patient's grade, sometimes one grade off.

Each site is a different camera: its own colour cast (a gain per channel), brightness, gamma, noise, resolution
and frame (some wider than high, the disc padded with black), and its own mix of grades, as hospitals differ.
Each site folder holds the images (PNG or JPEG) and ``labels.csv`` with ``file,label,split,patient``: the split is
given, by patient (a patient's two images on one side).

Everything is drawn from a generator seeded from ``seed``: the same arguments write the same files.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from confide.errors import DataError

LESIONS = (0.4, 4.0, 9.0, 16.0, 26.0)  # mean lesion count per grade
PREVALENCE = np.array([0.36, 0.22, 0.2, 0.13, 0.09])
GRADES = len(LESIONS)
Format = Literal["png", "jpeg", "mixed"]
FORMATS: dict[str, Format] = {"png": "png", "jpeg": "jpeg", "mixed": "mixed"}


@dataclass(frozen=True)
class Camera:
    """A site's acquisition."""

    gain: tuple[float, float, float]
    offset: float
    gamma: float
    noise: float
    height: int
    width: int


def site_camera(rng: np.random.Generator, size: int) -> Camera:
    gain = tuple(float(g) for g in 1 + rng.uniform(-0.18, 0.18, 3))
    height = round(float(size * rng.uniform(0.85, 1.15)))
    width = round(float(height * rng.choice([1.0, 1.0, 1.25, 1.33])))
    return Camera(
        gain=(gain[0], gain[1], gain[2]),
        offset=float(rng.uniform(-0.08, 0.08)),
        gamma=float(rng.uniform(0.8, 1.25)),
        noise=float(rng.uniform(0.005, 0.03)),
        height=height,
        width=width,
    )


def _blob(canvas: np.ndarray, cy: float, cx: float, sigma: float, colour: np.ndarray, alpha: float) -> None:
    """Blend a Gaussian spot of ``colour`` into ``canvas`` (H, W, 3) in place, within 3 sigma of its centre."""
    height, width, _ = canvas.shape
    reach = int(np.ceil(3 * sigma)) + 1
    top, bottom = max(0, int(cy) - reach), min(height, int(cy) + reach + 1)
    left, right = max(0, int(cx) - reach), min(width, int(cx) + reach + 1)
    if top >= bottom or left >= right:
        return
    yy, xx = np.mgrid[top:bottom, left:right]
    weight = alpha * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))[..., None]
    patch = canvas[top:bottom, left:right]
    canvas[top:bottom, left:right] = patch * (1 - weight) + colour * weight


def fundus(rng: np.random.Generator, camera: Camera, grade: int, eye: Literal["R", "L"]) -> np.ndarray:
    """One image (H, W, 3) uint8 of ``grade`` as ``camera`` takes it."""
    height, width = camera.height, camera.width
    side = min(height, width)
    cy, cx = height / 2 + rng.normal(0, 0.02 * side), width / 2 + rng.normal(0, 0.02 * side)
    radius = 0.46 * side
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r = np.hypot(yy - cy, xx - cx) / radius
    tone = np.array([0.8, 0.38, 0.17]) * rng.uniform(0.88, 1.08)
    image = tone * (1 - 0.38 * r**2)[..., None]
    side_sign = 1.0 if eye == "R" else -1.0
    disc_y, disc_x = cy + rng.normal(0, 0.03 * radius), cx + side_sign * 0.4 * radius
    _blob(image, cy, cx - side_sign * 0.05 * radius, 0.14 * radius, tone * 0.55, 0.6)  # macula
    for _ in range(6):  # vessels leave the optic disc in arcs
        start, bend = rng.uniform(0, 2 * np.pi), rng.uniform(-1.2, 1.2)
        for t in np.linspace(0.05, 0.95, 28):
            angle = start + bend * t
            _blob(
                image,
                disc_y + t * 0.95 * radius * np.sin(angle),
                disc_x + t * 0.95 * radius * np.cos(angle),
                max(0.6, 0.009 * side * (1.2 - t)),
                np.array([0.5, 0.12, 0.08]),
                0.55,
            )
    _blob(image, disc_y, disc_x, 0.09 * radius, np.array([0.98, 0.88, 0.6]), 0.95)  # optic disc
    exudate_share = 0.1 + 0.12 * grade
    for _ in range(int(rng.poisson(LESIONS[grade]))):
        at_r, at_a = 0.85 * radius * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        size = 0.011 * side * (1 + 0.35 * grade) * rng.uniform(0.6, 1.4)
        bright = rng.uniform() < exudate_share
        colour = np.array([0.97, 0.9, 0.45]) if bright else np.array([0.4, 0.05, 0.04])
        _blob(image, cy + at_r * np.sin(at_a), cx + at_r * np.cos(at_a), size, colour, 0.9)
    inside = np.clip((1 - r) * radius / 1.5, 0, 1)[..., None]  # a soft edge of about 1.5 pixels
    image = image * inside
    image = np.clip(image * np.array(camera.gain) + camera.offset * inside, 0, 1) ** camera.gamma
    image = image + rng.normal(0, camera.noise, image.shape) * inside
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_grades(
    root: Path,
    *,
    sites: int = 3,
    patients: int = 60,
    size: int = 128,
    test_fraction: float = 0.25,
    fmt: Format = "png",
    seed: int = 0,
    on_image: Callable[[str, str], None] | None = None,
) -> list[Path]:
    """Write ``sites`` folders (``site-1`` ...) under ``root`` (see the module docstring); returns them."""
    if sites < 1 or patients < 2 or size < 16 or not 0 < test_fraction < 1:
        raise DataError(
            f"generated grades need sites >= 1, patients >= 2, size >= 16 and 0 < test_fraction < 1; got {sites}, "
            f"{patients}, {size} and {test_fraction}"
        )
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{root} already holds files; generate into a new or empty folder")
    folders = []
    for s in range(sites):
        rng = np.random.default_rng([seed, s])
        camera = site_camera(rng, size)
        mix = rng.dirichlet(PREVALENCE * 12)
        folder = root / f"site-{s + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        testing = set(rng.permutation(patients)[: max(1, round(patients * test_fraction))].tolist())
        rows: list[tuple[str, str, str, str]] = []
        for p in range(patients):
            patient = f"s{s + 1}-p{p + 1:04d}"
            grade = int(rng.choice(GRADES, p=mix))
            suffix = ".jpg" if fmt == "jpeg" or (fmt == "mixed" and p % 2) else ".png"
            for eye in ("R", "L"):
                eye_grade = int(np.clip(grade + (rng.choice([-1, 1]) if rng.uniform() < 0.15 else 0), 0, GRADES - 1))
                name = f"{patient}-{eye}{suffix}"
                pixels = fundus(rng, camera, eye_grade, eye)
                if suffix == ".jpg":
                    Image.fromarray(pixels).save(folder / name, quality=92)
                else:
                    Image.fromarray(pixels).save(folder / name)
                rows.append((name, str(eye_grade), "test" if p in testing else "train", patient))
                if on_image is not None:
                    on_image(folder.name, name)
        with open(folder / "labels.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "label", "split", "patient"])
            writer.writerows(rows)
        folders.append(folder)
    return folders
