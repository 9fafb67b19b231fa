"""How close a reconstructed image is to the true one: PSNR and SSIM, for images with values in [0, 1].

SSIM (Wang et al. 2004) is computed with a Gaussian window (standard deviation 1.5 pixels, cut at 3.5 of them, and
never wider than the image), the usual constants K1 = 0.01 and K2 = 0.03 for a data range of 1, and averaged over
the pixels whose window lies inside the image.
"""

from __future__ import annotations

import math

import numpy as np

DATA_RANGE = 1.0


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"two images of one 2-D shape are needed, got {x.shape} and {y.shape}")
    return x, y


def psnr(reconstructed: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (infinite for identical images)."""
    x, y = _pair(reconstructed, truth)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(DATA_RANGE**2 / mse)


def gaussian_window(side: int, sigma: float = 1.5) -> np.ndarray:
    """A normalised 1-D Gaussian window of odd length at most ``side`` (and at most 7 sigma wide)."""
    length = min(2 * math.ceil(3.5 * sigma) + 1, side if side % 2 else side - 1)
    if length < 1:
        raise ValueError(f"an image of side {side} is too small for a window")
    offsets = np.arange(length) - (length - 1) / 2
    weights = np.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def _filter(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable filtering, keeping only positions where the window fits ("valid")."""
    rows = np.apply_along_axis(lambda r: np.convolve(r, window, mode="valid"), 1, image)
    return np.apply_along_axis(lambda c: np.convolve(c, window, mode="valid"), 0, rows)


def ssim(reconstructed: np.ndarray, truth: np.ndarray, sigma: float = 1.5) -> float:
    """Mean structural similarity (1 for identical images, near 0 for unrelated ones)."""
    x, y = _pair(reconstructed, truth)
    window = gaussian_window(min(x.shape), sigma)
    c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
    mu_x, mu_y = _filter(x, window), _filter(y, window)
    var_x = _filter(x * x, window) - mu_x**2
    var_y = _filter(y * y, window) - mu_y**2
    cov = _filter(x * y, window) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(index.mean())
