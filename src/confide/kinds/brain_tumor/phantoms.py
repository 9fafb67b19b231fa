"""Deterministic synthetic brain-tumour MRI cases ("phantoms") in the BraTS 2021 layout.

Each case starts from the MNI152 2 mm template that nilearn ships (grey matter, white matter and
brain mask; CSF is the rest of the brain mask), and then:

1. deforms it: a small random similarity transform plus a smooth elastic field of a few mm;
2. grows a glioma around a centre in the deep white matter of one hemisphere: an irregular
   ellipsoidal core (a necrotic centre inside an enhancing rim for high grade, a solid
   non-enhancing core for low grade), oedema that spreads further along white matter, and a mass
   effect that pushes the surrounding tissue away;
3. paints T1, T1c, T2 and FLAIR from the tissue fractions of every voxel (partial volume) using
   :data:`~confide.kinds.brain_tumor.phantom_contrast.TISSUE_INTENSITY`, with some texture in the tumour;
4. applies the site's acquisition: contrast, gain, a smooth multiplicative bias field, Rician noise,
   skull stripping and resampling to the site's voxel grid.

All randomness comes from the ``numpy.random.Generator`` passed in, so a case is a pure function of
the profile and the generator state. :func:`write_federation` writes a whole federation, one folder
per site, with one ``SeedSequence([seed, site_index, case_index])`` stream per case (0-based indices).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage, special

from confide.errors import ConfigError
from confide.kinds.brain_tumor.phantom_contrast import (
    MODALITIES,
    TEMPLATE_DETAIL_WEIGHT,
    TISSUE_INTENSITY,
    SiteProfile,
    default_site_profiles,
    profile_problems,
)
from confide.kinds.brain_tumor.phantom_fields import (
    F32,
    Atlas,
    Box,
    load_atlas,
    random_rotation,
    small_rotation,
    smooth_field,
)

__all__ = [
    "FILE_SUFFIXES",
    "MODALITIES",
    "PhantomCase",
    "SiteProfile",
    "default_site_profiles",
    "generate_case",
]


FILE_SUFFIXES: Mapping[str, str] = {
    "t1": "_t1",
    "t1c": "_t1ce",
    "t2": "_t2",
    "flair": "_flair",
    "seg": "_seg",
}
"""BraTS 2021 file-name suffix of each modality and of the segmentation."""

_EDGE_MM = 0.7  # logistic width of tissue boundaries (partial volume at 2 mm voxels)


@dataclass(frozen=True)
class PhantomCase:
    """One synthetic case on the site's written grid.

    ``images`` maps ``t1``, ``t1c``, ``t2`` and ``flair`` to float32 volumes; ``label`` is uint8 with
    the BraTS 2021 labels (0 background, 1 necrotic or non-enhancing core, 2 oedema, 4 enhancing);
    ``affine`` maps voxel indices to RAS world mm. ``info`` describes the tumour (grade, radius,
    centre, oedema extent) in plain JSON types.
    """

    images: dict[str, np.ndarray]
    label: np.ndarray
    affine: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def _sigmoid(x: F32) -> F32:
    return np.asarray(special.expit(x), dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Anatomy: deformation and tumour


@dataclass(frozen=True)
class _Tumour:
    high_grade: bool
    radius_mm: float
    radii_mm: NDArray[np.float64]
    rotation: NDArray[np.float64]
    rim_mm: float
    oedema_mm: float
    push: float
    centre_index: int


def _draw_tumour(profile: SiteProfile, rng: np.random.Generator, atlas: Atlas) -> _Tumour:
    high_grade = bool(rng.random() < profile.high_grade_fraction)
    low, high = profile.radius_mm
    radius = float(rng.uniform(low, high))
    aniso = rng.uniform(0.8, 1.2, size=3)
    aniso /= np.prod(aniso) ** (1 / 3)
    rotation = random_rotation(rng)
    rim = max(3.0, radius * float(rng.uniform(0.22, 0.32)))  # thick, irregular rims as in glioblastoma
    oedema = radius * float(rng.uniform(0.5, 1.5))
    push = float(rng.uniform(0.35, 0.6)) * (1.0 if high_grade else 0.6)
    right = bool(rng.random() < 0.5)
    # Deep enough that the core stays inside the brain; relax for very large tumours.
    needed = min(radius * 1.2 + 6.0, float(atlas.depth_mm[0]) * 0.9)
    count = int(np.searchsorted(-atlas.depth_mm, -needed, side="right"))
    pool = np.flatnonzero(atlas.right[:count] == right)
    if pool.size == 0:
        pool = np.arange(max(count, 1))
    centre_index = int(pool[rng.integers(pool.size)])
    return _Tumour(high_grade, radius, radius * aniso, rotation, rim, oedema, push, centre_index)


def _source_coordinates(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    zooms: NDArray[np.float64],
    tumour: _Tumour,
    atlas_centre: NDArray[np.float64],
) -> tuple[F32, NDArray[np.float64]]:
    """Where each output voxel samples the template (3, *shape), and the tumour centre (voxels).

    Output = template deformed by a similarity transform and a smooth elastic field, then pushed
    radially away from the tumour centre (mass effect).
    """
    scale = float(rng.uniform(0.95, 1.05)) * rng.uniform(0.98, 1.02, size=3)
    rot = small_rotation(np.deg2rad(rng.uniform(-3.0, 3.0, size=3)))
    shift = rng.uniform(-1.0, 1.0, size=3)
    matrix = rot @ np.diag(1.0 / scale)  # output -> source, about the crop centre
    middle = (np.asarray(shape, dtype=np.float64) - 1) / 2
    amplitude = float(rng.uniform(0.5, 1.0))  # rms elastic displacement, voxels
    elastic = [amplitude * smooth_field(rng, shape, 10.0) for _ in range(3)]

    # Tumour centre in output voxels: invert source(x) = middle + M (x - middle) + shift + e(x).
    inverse = np.linalg.inv(matrix)
    centre = middle + inverse @ (atlas_centre - middle - shift)
    for _ in range(3):
        at = tuple(np.clip(np.rint(centre).astype(int), 0, np.asarray(shape) - 1))
        e = np.array([field_[at] for field_ in elastic], dtype=np.float64)
        centre = middle + inverse @ (atlas_centre - middle - shift - e)

    grids = [np.arange(n, dtype=np.float32) for n in shape]
    rel = [
        (grids[0] - centre[0])[:, None, None].astype(np.float32),
        (grids[1] - centre[1])[None, :, None].astype(np.float32),
        (grids[2] - centre[2])[None, None, :].astype(np.float32),
    ]
    r2 = sum((r * np.float32(z)) ** 2 for r, z in zip(rel, zooms, strict=True))
    length = 1.6 * tumour.radius_mm
    squeeze = np.float32(tumour.push) * np.exp(-r2 / np.float32(length**2)).astype(np.float32)
    pre = [
        (grids[0] - middle[0]).astype(np.float32)[:, None, None] - rel[0] * squeeze,
        (grids[1] - middle[1]).astype(np.float32)[None, :, None] - rel[1] * squeeze,
        (grids[2] - middle[2]).astype(np.float32)[None, None, :] - rel[2] * squeeze,
    ]
    coords = np.empty((3, *shape), dtype=np.float32)
    for i in range(3):
        coords[i] = (
            pre[0] * np.float32(matrix[i, 0])
            + pre[1] * np.float32(matrix[i, 1])
            + pre[2] * np.float32(matrix[i, 2])
            + np.float32(middle[i] + shift[i])
            + elastic[i]
        )
    return coords, centre


def _tumour_box(
    centre: NDArray[np.float64], reach_mm: float, zooms: NDArray[np.float64], shape: tuple[int, ...]
) -> Box:
    half = np.ceil(reach_mm / zooms).astype(int)
    low = np.clip(np.floor(centre).astype(int) - half, 0, np.asarray(shape))
    high = np.clip(np.ceil(centre).astype(int) + half + 1, 0, np.asarray(shape))
    return (slice(low[0], high[0]), slice(low[1], high[1]), slice(low[2], high[2]))


@dataclass(frozen=True)
class _TumourMaps:
    box: Box
    keep: F32  # fraction of normal tissue (gm, wm) that is left, in the box
    keep_csf: F32
    fractions: dict[str, F32]  # tumour tissue fractions in the box
    texture: dict[str, F32]  # relative intensity modulation per tumour tissue (>0 brighter with water)
    label: NDArray[np.uint8]


def _paint_tumour(
    rng: np.random.Generator,
    tumour: _Tumour,
    centre: NDArray[np.float64],
    zooms: NDArray[np.float64],
    gm: F32,
    wm: F32,
    csf: F32,
) -> _TumourMaps:
    """Tissue fractions and labels of the tumour compartments around ``centre`` (output voxels)."""
    r = tumour.radius_mm
    reach = 1.56 * (r + 1.4 * tumour.oedema_mm) + 4.0
    box = _tumour_box(centre, reach, zooms, gm.shape)
    g, w, c = gm[box], wm[box], csf[box]
    shape = (int(g.shape[0]), int(g.shape[1]), int(g.shape[2]))
    offset = np.array([s.start for s in box], dtype=np.float64)

    axes = [((np.arange(n) + offset[i] - centre[i]) * zooms[i]).astype(np.float32) for i, n in enumerate(shape)]
    rel = [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]
    rho2 = np.zeros(shape, dtype=np.float32)
    for i in range(3):
        q = sum(rel[j] * np.float32(tumour.rotation[i, j]) for j in range(3)) / np.float32(tumour.radii_mm[i])
        rho2 += q * q
    boundary = np.clip(smooth_field(rng, shape, 3.0), -2.0, 2.0)
    rho = np.sqrt(rho2) / (1 + np.float32(0.15) * boundary)
    s_core = (1 - rho) * np.float32(r)  # ~ mm inside the core boundary

    brain = g + w + c
    tissue = g + w
    core_hard = (s_core > 0) & (brain >= 0.5)
    p_core = _sigmoid(s_core / np.float32(_EDGE_MM))

    wm_rel = w / (brain + np.float32(1e-3))
    spread = np.clip(smooth_field(rng, shape, 4.0), -2.0, 2.0)
    reach_here = np.float32(tumour.oedema_mm) * (0.25 + 0.75 * wm_rel) * (1 + np.float32(0.2) * spread)
    s_oed = reach_here - np.maximum(-s_core, 0)
    oed_hard = (s_oed > 0) & (tissue > c) & (brain >= 0.5)
    components, _ = ndimage.label(oed_hard | core_hard)
    touching = np.unique(components[core_hard])
    connected = np.isin(components, touching[touching > 0])
    allowed = ndimage.binary_dilation(connected).astype(np.float32)
    q = _sigmoid(s_oed / np.float32(_EDGE_MM)) * allowed

    keep = (1 - p_core) * (1 - q)
    keep_csf = 1 - p_core
    fractions: dict[str, F32] = {"oedema": tissue * (1 - p_core) * q}
    if tumour.high_grade:
        rim_var = np.clip(smooth_field(rng, shape, 2.0), -2.0, 2.0)
        rim = np.clip(np.float32(tumour.rim_mm) * (1 + np.float32(0.2) * rim_var), 2.0, 0.6 * r)
        p_nec = _sigmoid((s_core - rim) / np.float32(_EDGE_MM))
        fractions["necrosis"] = brain * p_nec
        fractions["enhancing"] = brain * (p_core - p_nec)
    else:
        fractions["nonenhancing"] = brain * p_core

    fine = smooth_field(rng, shape, 1.5)
    coarse = smooth_field(rng, shape, 3.0)
    texture = {
        "oedema": np.float32(0.06) * coarse,
        "necrosis": np.float32(0.12) * fine,
        "enhancing": np.float32(0.10) * fine + np.float32(0.05) * coarse,
        "nonenhancing": np.float32(0.06) * fine + np.float32(0.05) * coarse,
    }

    normal = (g + w) * keep + c * keep_csf
    codes = np.array([0, *(_LABEL_OF[n] for n in fractions)], dtype=np.uint8)
    stacked = np.stack([normal, *fractions.values()])
    label = codes[np.argmax(stacked, axis=0)]
    label[brain < 0.5] = 0
    return _TumourMaps(box, keep, keep_csf, fractions, texture, label.astype(np.uint8))


_LABEL_OF: Mapping[str, int] = {"oedema": 2, "necrosis": 1, "nonenhancing": 1, "enhancing": 4}


# ----------------------------------------------------------------------------------------------
# Intensities and acquisition


def _output_grid(
    atlas: Atlas, voxel_size: tuple[float, float, float]
) -> tuple[NDArray[np.float64], NDArray[np.float64], tuple[int, int, int]]:
    """Sampling factors, voxel->world affine and shape of the grid with ``voxel_size`` mm voxels.

    Written voxel ``k`` covers template voxels ``f*k ... f*k + f - 1`` (``f = voxel_size / zoom``),
    so its centre is at template index ``f*k + (f - 1) / 2`` and the field of view is unchanged.
    """
    factors = np.asarray(voxel_size, dtype=np.float64) / atlas.zooms
    offsets = (factors - 1) / 2
    shape = tuple(max(1, math.floor(n / f + 1e-6)) for n, f in zip(atlas.shape, factors, strict=True))
    step = np.eye(4)
    step[:3, :3] = np.diag(factors)
    step[:3, 3] = offsets
    return factors, atlas.affine @ step, (shape[0], shape[1], shape[2])


def _resample(volume: np.ndarray, factors: NDArray[np.float64], shape: tuple[int, int, int], order: int) -> np.ndarray:
    """Sample ``volume`` at template index ``f*k + (f - 1) / 2`` (see :func:`_output_grid`).

    ``order`` 1 is linear interpolation (images), 0 nearest neighbour (labels, ties to the upper
    voxel). Integer factors take a fast exact path: an odd factor picks one voxel, an even factor
    averages (or, for labels, picks the upper of) the two voxels either side of the centre.
    """
    rounded = np.rint(factors)
    if not (np.allclose(factors, rounded) and np.all(rounded >= 1)):
        return np.asarray(
            ndimage.affine_transform(
                volume, factors, offset=(factors - 1) / 2, output_shape=shape, order=order, mode="nearest"
            )
        )
    out = volume
    for axis, (f, n) in enumerate(zip(rounded.astype(int), shape, strict=True)):
        if f == 1:
            continue
        upper = [slice(None)] * 3
        upper[axis] = slice(f // 2, f // 2 + f * (n - 1) + 1, f)
        picked = out[tuple(upper)]
        if f % 2 == 0 and order == 1:
            lower = [slice(None)] * 3
            lower[axis] = slice(f // 2 - 1, f // 2 - 1 + f * (n - 1) + 1, f)
            picked = (out[tuple(lower)] + picked) * np.asarray(0.5, dtype=out.dtype)
        out = picked
    return np.ascontiguousarray(out)


def _warp(volume: F32, coords: F32) -> F32:
    """Sample ``volume`` at ``coords`` (3, *shape) with linear interpolation."""
    return np.asarray(ndimage.map_coordinates(volume, coords, order=1, mode="nearest", output=np.float32))


def generate_case(profile: SiteProfile, rng: np.random.Generator) -> PhantomCase:
    """Generate one case for ``profile``, drawing every random number from ``rng``."""
    problems = profile_problems(profile)
    if problems:
        raise ConfigError(f"site profile {profile.name!r}: " + "; ".join(problems))
    atlas = load_atlas()
    zooms = atlas.zooms
    shape = (int(atlas.gm.shape[0]), int(atlas.gm.shape[1]), int(atlas.gm.shape[2]))

    tumour = _draw_tumour(profile, rng, atlas)
    atlas_centre = atlas.centres[tumour.centre_index].astype(np.float64)
    coords, centre = _source_coordinates(rng, shape, zooms, tumour, atlas_centre)

    gm, wm, csf, detail = (_warp(v, coords) for v in (atlas.gm, atlas.wm, atlas.csf, atlas.detail))
    del coords
    brain = (gm + wm + csf) >= 0.5

    maps = _paint_tumour(rng, tumour, centre, zooms, gm, wm, csf)
    box = maps.box
    gm_box, wm_box, csf_box, detail_box = gm[box], wm[box], csf[box], detail[box]
    gm[box] = gm_box * maps.keep
    wm[box] = wm_box * maps.keep
    csf[box] = csf_box * maps.keep_csf
    detail[box] = detail_box * maps.keep
    label_crop = np.zeros(shape, dtype=np.uint8)
    label_crop[box] = maps.label

    bias_shared = smooth_field(rng, shape, 16.0)
    inside = np.flatnonzero(brain)
    images_crop: dict[str, F32] = {}
    for m_index, modality in enumerate(MODALITIES):
        table = TISSUE_INTENSITY[modality]
        water = -1.0 if modality in ("t1", "t1c") else 1.0  # more water: darker T1, brighter T2
        signal = gm * np.float32(table["gm"]) + wm * np.float32(table["wm"]) + csf * np.float32(table["csf"])
        signal += detail * np.float32(TEMPLATE_DETAIL_WEIGHT[modality])
        tumour_signal = np.zeros(maps.keep.shape, dtype=np.float32)
        for tissue, fraction in maps.fractions.items():
            value = table[tissue] + (profile.enhancement if modality == "t1c" and tissue == "enhancing" else 0.0)
            tumour_signal += fraction * np.float32(value) * (1 + np.float32(water) * maps.texture[tissue])
        signal[box] += tumour_signal
        np.maximum(signal, 0, out=signal)
        gamma = float(profile.contrast_gamma[m_index])
        if gamma != 1.0:
            np.power(signal, np.float32(gamma), out=signal)
        gain = float(profile.modality_gain[m_index])
        own = smooth_field(rng, shape, 16.0)
        bias = np.float32(0.75) * bias_shared + np.float32(0.25) * own
        bias *= np.float32(profile.bias_strength / max(float(np.abs(bias).max()), 1e-6))
        signal *= np.exp(bias) * np.float32(gain)
        images_crop[modality] = signal

    # Noise last, so profiles differing only in noise_sigma share the same anatomy.
    for m_index, modality in enumerate(MODALITIES):
        signal = images_crop[modality]
        values = signal.ravel()[inside]
        if profile.noise_sigma > 0:
            wm_level = TISSUE_INTENSITY[modality]["wm"] ** float(profile.contrast_gamma[m_index])
            sigma = np.float32(profile.noise_sigma * float(profile.modality_gain[m_index]) * wm_level)
            real = values + sigma * rng.standard_normal(values.size, dtype=np.float32)
            imag = sigma * rng.standard_normal(values.size, dtype=np.float32)
            values = np.sqrt(real * real + imag * imag)
        clean = np.zeros(signal.size, dtype=np.float32)
        clean[inside] = values
        images_crop[modality] = clean.reshape(shape)
    label_crop[~brain] = 0

    factors, affine, out_shape = _output_grid(atlas, profile.voxel_size)
    images: dict[str, np.ndarray] = {}
    for modality in MODALITIES:
        full = np.zeros(atlas.shape, dtype=np.float32)
        full[atlas.crop] = images_crop[modality]
        images[modality] = np.asarray(_resample(full, factors, out_shape, 1), dtype=np.float32)
    full_label = np.zeros(atlas.shape, dtype=np.uint8)
    full_label[atlas.crop] = label_crop
    label = np.asarray(_resample(full_label, factors, out_shape, 0), dtype=np.uint8)

    origin = np.array([s.start for s in atlas.crop], dtype=np.float64)
    centre_world = atlas.affine @ np.append(centre + origin, 1.0)
    info: dict[str, Any] = {
        "grade": "high" if tumour.high_grade else "low",
        "radius_mm": round(tumour.radius_mm, 3),
        "oedema_extent_mm": round(tumour.oedema_mm, 3),
        "centre_mm": [round(float(v), 2) for v in centre_world[:3]],
        "hemisphere": "right" if centre_world[0] > 0 else "left",
    }
    return PhantomCase(images=images, label=label, affine=affine, info=info)


# ----------------------------------------------------------------------------------------------
# Writing a federation
