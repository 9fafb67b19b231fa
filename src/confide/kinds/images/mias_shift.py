"""Simulated acquisitions for the MIAS sites: what makes one simulated site's films look unlike another's.

MIAS is one centre. Acquisition differences stand in for different vendors and scanners. They are fixed per site
index (not per job seed), applied to the 256-pixel films in this order (:meth:`SiteShift.apply`):

1. resolution: the matrix resized by ``scale`` (pixel spacing 0.8 mm / ``scale``);
2. blur: a Gaussian of ``blur_sigma`` pixels (the detector's modulation transfer);
3. noise: additive Gaussian of standard deviation ``noise_std``, from the generator given (seeded per site and film);
4. the vendor's display curve: ``gamma`` (x ** gamma), then ``contrast`` about mid-grey, then ``brightness``;
   clipped to [0, 1].

The table :data:`SHIFTS` gives sites 1-3 (site 1 is the film as digitised); further sites draw theirs from a
generator seeded by their index. At a 64-pixel input, the display curve is by far the strongest of the four.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

SHIFT_SEED = 20_240_611  # seeds the shifts of sites beyond SHIFTS and every film's noise


@dataclass(frozen=True)
class SiteShift:
    """A site's simulated acquisition (see the module docstring for the order of the steps)."""

    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0
    blur_sigma: float = 0.0
    noise_std: float = 0.0
    scale: float = 1.0

    def describe(self) -> str:
        if self == SiteShift():
            return "acquisition: as digitised (reference site, no simulated shift)"
        return (
            f"acquisition (simulated): gamma {self.gamma:.2f}, contrast {self.contrast:.2f}, "
            f"brightness {self.brightness:+.2f}, blur {self.blur_sigma:.1f} px, noise sd {self.noise_std:.3f}, "
            f"matrix x{self.scale:.2f}"
        )

    def apply(
        self, pixels: np.ndarray, spacing_mm: tuple[float, float], rng: np.random.Generator
    ) -> tuple[np.ndarray, tuple[float, float]]:
        """A film (H, W) float32 in [0, 1] as this site acquires it, and its pixel spacing (row, column) in mm."""
        x = pixels.astype(np.float32, copy=True)
        spacing = spacing_mm
        if self.scale != 1.0:
            h, w = x.shape
            size = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
            x = np.asarray(Image.fromarray(x).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
            spacing = (spacing[0] * h / size[1], spacing[1] * w / size[0])
        if self.blur_sigma > 0:
            x = gaussian_blur(x, self.blur_sigma)
        if self.noise_std > 0:
            x = x + rng.normal(0.0, self.noise_std, size=x.shape).astype(np.float32)
        x = np.clip(x, 0.0, 1.0) ** self.gamma
        x = (x - 0.5) * self.contrast + 0.5 + self.brightness
        return np.clip(x, 0.0, 1.0).astype(np.float32), spacing


SHIFTS: tuple[SiteShift, ...] = (
    SiteShift(),  # the film as digitised
    SiteShift(gamma=0.7, contrast=0.85, brightness=0.08, blur_sigma=1.5, noise_std=0.0, scale=0.75),  # soft, bright
    SiteShift(gamma=1.4, contrast=1.2, brightness=-0.05, blur_sigma=0.0, noise_std=0.04, scale=1.0),  # hard, noisy
)


def site_shift(index: int) -> SiteShift:
    """The acquisition of site ``index`` (0-based): :data:`SHIFTS`, then drawn from a generator seeded by the index."""
    if index < len(SHIFTS):
        return SHIFTS[index]
    rng = np.random.default_rng([SHIFT_SEED, index])
    return SiteShift(
        gamma=float(np.exp(rng.uniform(-0.4, 0.4))),
        contrast=float(rng.uniform(0.8, 1.25)),
        brightness=float(rng.uniform(-0.06, 0.08)),
        blur_sigma=float(rng.choice([0.0, 1.0, 1.5])),
        noise_std=float(rng.choice([0.0, 0.02, 0.04])),
        scale=float(rng.choice([0.75, 1.0])),
    )


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = x.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(
            (float(t) * np.take(padded, np.arange(k, k + n), axis=axis) for k, t in enumerate(taps)),
            start=np.zeros_like(out),
        )
    return out.astype(np.float32)
