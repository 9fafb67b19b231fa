"""Fields the phantoms are built from: the MNI152 template's tissue maps (loaded once), smooth random fields
and rotations. Pure functions of their inputs and the generator passed in."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

F32 = NDArray[np.float32]
Box = tuple[slice, slice, slice]
_CROP_MARGIN = 6  # voxels kept around the brain for the deformation


@dataclass(frozen=True)
class Atlas:
    """The template tissue maps, cropped to the brain, and where tumours may be centred."""

    shape: tuple[int, int, int]
    affine: NDArray[np.float64]
    zooms: NDArray[np.float64]
    crop: Box
    gm: F32
    wm: F32
    csf: F32
    detail: F32
    centres: NDArray[np.int64]  # (n, 3) crop voxel indices of deep white matter, deepest first
    depth_mm: NDArray[np.float64]  # distance of each centre to the brain edge, descending
    right: NDArray[np.bool_]  # whether each centre lies in the right hemisphere (world x > 0)


@functools.lru_cache(maxsize=1)
def load_atlas() -> Atlas:
    """Load the bundled MNI152 2 mm maps once and derive tissue probabilities and tumour sites."""
    from nilearn import datasets  # imported here: importing nilearn takes seconds

    t1_img = datasets.load_mni152_template(resolution=2)
    t1 = np.asarray(t1_img.get_fdata(), dtype=np.float32)
    gm = np.clip(np.asarray(datasets.load_mni152_gm_template(resolution=2).get_fdata(), np.float32), 0, 1)
    wm = np.clip(np.asarray(datasets.load_mni152_wm_template(resolution=2).get_fdata(), np.float32), 0, 1)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=2).get_fdata(), np.float32) > 0.5
    wm = np.minimum(wm, 1 - gm)
    rest = np.clip(mask.astype(np.float32) - gm - wm, 0, 1)
    csf = np.clip(ndimage.gaussian_filter(rest, 0.6), 0, 1 - gm - wm).astype(np.float32)
    affine = np.asarray(t1_img.affine, dtype=np.float64)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))

    # Fine anatomy of the T1 template that a linear mix of the three tissues does not explain.
    inside = mask
    design = np.stack([gm[inside], wm[inside], csf[inside]], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, t1[inside].astype(np.float64), rcond=None)
    detail = np.zeros_like(t1)
    detail[inside] = (t1[inside] - design @ coef) / max(float(coef[1]), 1e-6)
    detail = np.clip(detail, -0.15, 0.15).astype(np.float32)

    where = np.argwhere(mask)
    low = np.maximum(where.min(axis=0) - _CROP_MARGIN, 0)
    high = np.minimum(where.max(axis=0) + _CROP_MARGIN + 1, mask.shape)
    crop: Box = (slice(low[0], high[0]), slice(low[1], high[1]), slice(low[2], high[2]))

    depth = ndimage.distance_transform_edt(mask, sampling=zooms)[crop]
    deep = (wm[crop] > 0.8) & (depth >= 8.0)
    world_x = affine[0, 0] * np.arange(mask.shape[0])[crop[0]] + affine[0, 3]
    lateral = np.abs(world_x)[:, None, None] >= 10.0
    centres = np.argwhere(deep & lateral)
    order = np.argsort(-depth[tuple(centres.T)], kind="stable")
    centres = centres[order]
    right = (affine[0, 0] * (centres[:, 0] + low[0]) + affine[0, 3]) > 0

    def cropped(volume: F32) -> F32:
        out = np.ascontiguousarray(volume[crop], dtype=np.float32)
        out.flags.writeable = False
        return out

    return Atlas(
        shape=(int(mask.shape[0]), int(mask.shape[1]), int(mask.shape[2])),
        affine=affine,
        zooms=zooms,
        crop=crop,
        gm=cropped(gm),
        wm=cropped(wm),
        csf=cropped(csf),
        detail=cropped(detail),
        centres=centres.astype(np.int64),
        depth_mm=depth[tuple(centres.T)].astype(np.float64),
        right=right,
    )


# ----------------------------------------------------------------------------------------------
# Smooth random fields


@functools.lru_cache(maxsize=256)
def _basis(n: int, spacing: float) -> F32:
    """(n, m) Gaussian interpolation weights from control points ``spacing`` voxels apart.

    Rows sum to a constant and the weights are scaled so that i.i.d. N(0, 1) control values give a
    field of unit mean variance (the 3-D field is the tensor product of three such bases).
    """
    m = math.ceil((n - 1) / spacing) + 3
    knots = (np.arange(m) - 1.0) * spacing
    x = np.arange(n, dtype=np.float64)[:, None]
    weights = np.exp(-0.5 * ((x - knots[None, :]) / spacing) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)
    weights /= math.sqrt(float(np.mean(np.sum(weights**2, axis=1))))
    out = weights.astype(np.float32)
    out.flags.writeable = False
    return out


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], spacing: float) -> F32:
    """A smooth random field of about unit variance with features ``~2 * spacing`` voxels wide.

    Random values on a coarse grid are interpolated separably (three small matrix products), which
    is much cheaper than smoothing white noise at full resolution.
    """
    bx, by, bz = (_basis(int(n), float(spacing)) for n in shape)
    coarse = rng.standard_normal((bx.shape[1], by.shape[1], bz.shape[1]), dtype=np.float32)
    t = coarse @ bz.T  # (mx, my, nz)
    t = by @ t  # (mx, ny, nz)
    out = bx @ t.reshape(bx.shape[1], -1)
    return np.ascontiguousarray(out.reshape(shape), dtype=np.float32)


def random_rotation(rng: np.random.Generator) -> NDArray[np.float64]:
    """A uniformly random 3-D rotation matrix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return np.asarray(q, dtype=np.float64)


def small_rotation(angles_rad: NDArray[np.float64]) -> NDArray[np.float64]:
    """Rotation matrix from three small angles (x, then y, then z)."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=np.float64)
