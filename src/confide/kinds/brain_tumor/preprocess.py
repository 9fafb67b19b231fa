"""Bringing one case onto one voxel grid and into a fixed-size region of interest.

:func:`prepare_case` runs these steps, each failing with :class:`~confide.errors.CaseError` that
names the file and what is wrong:

1. read each NIfTI file (must be a finite 3-D volume with a usable affine) and reorient it to RAS;
2. resample every modality (linear) and the segmentation (nearest) onto the grid of the reference
   modality, after checking that the fields of view overlap;
3. find the brain: the non-zero voxels when the data are skull-stripped, otherwise the largest
   connected foreground component above an Otsu threshold, holes filled;
4. crop to the brain's bounding box plus a margin; z-score each modality inside the brain, 0 outside;
5. pad the crop, centred, so that its physical aspect matches the ROI, then resize it to the ROI
   (Gaussian anti-aliasing before downsampling, trilinear for images, nearest for labels).

A voxel of the reference grid that another modality does not cover is 0 in that modality's channel.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from nibabel.processing import resample_from_to
from scipy import ndimage

from confide.errors import CaseError, ConfigError
from confide.kinds.brain_tumor.brats import MODALITIES, BratsCase, CaseProblem

SKULL_STRIPPED_ZERO_FRACTION = 0.3
"""Data with at least this fraction of exact zeros (in every modality) count as skull-stripped."""

MIN_OVERLAP = 0.5
"""Least fraction of the smaller field of view that must lie inside the other one."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How a case is brought into the fixed-size input of a model."""

    roi: tuple[int, int, int] = (64, 64, 64)
    margin_vox: int = 2
    reference: str = "t1c"

    def __post_init__(self) -> None:
        roi = tuple(self.roi)
        if len(roi) != 3 or not all(isinstance(n, int | np.integer) and not isinstance(n, bool) and n > 0 for n in roi):
            raise ConfigError(f"preprocess roi must be three positive integers, got {self.roi!r}")
        object.__setattr__(self, "roi", tuple(int(n) for n in roi))
        if not isinstance(self.margin_vox, int | np.integer) or self.margin_vox < 0:
            raise ConfigError(f"preprocess margin_vox must be a non-negative integer, got {self.margin_vox!r}")
        if self.reference not in MODALITIES:
            raise ConfigError(f"preprocess reference must be one of {', '.join(MODALITIES)}, got {self.reference!r}")


@dataclass(frozen=True)
class PreparedCase:
    """One case ready for a model: four z-scored channels and, when known, the label map."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    enhancing_label: int
    brain_fraction: float


def _fail(case: BratsCase, reason: str) -> CaseError:
    return CaseError(case.case_id, reason)


def _load(case: BratsCase, what: str, path: object) -> nib.Nifti1Image:
    """Read one file as a float32 RAS image, checking shape, values and affine."""
    try:
        img: Any = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except FileNotFoundError:
        raise _fail(case, f"{what} file {path} does not exist") from None
    except Exception as exc:
        raise _fail(case, f"cannot read {what} file {path}: {type(exc).__name__}: {exc}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 1:
        raise _fail(case, f"{what} file {path} has shape {data.shape}; expected a 3-D volume")
    try:
        data = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise _fail(case, f"{what} file {path} holds values that are not numbers ({exc})") from None
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise _fail(case, f"{what} file {path} holds {bad} non-finite voxel value(s) (NaN or infinity)")
    columns = np.linalg.norm(affine[:3, :3], axis=0)
    if (
        not np.isfinite(affine).all()
        or columns.min() <= 0
        or (abs(np.linalg.det(affine[:3, :3])) < 1e-6 * float(np.prod(columns)))
    ):
        raise _fail(
            case,
            f"{what} file {path} has a singular or non-finite affine; the grids cannot be brought together",
        )
    return nib.as_closest_canonical(nib.Nifti1Image(data, affine))


def _world_box(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world-space bounding box of the voxel grid (voxel edges included)."""
    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in img.shape[:3]], indexing="ij")).reshape(3, -1)
    world = img.affine[:3, :3] @ corners + img.affine[:3, 3:4]
    return world.min(axis=1), world.max(axis=1)


def _check_overlap(case: BratsCase, what: str, path: object, img: nib.Nifti1Image, ref: nib.Nifti1Image) -> None:
    (lo_a, hi_a), (lo_b, hi_b) = _world_box(img), _world_box(ref)
    inter = float(np.prod(np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0.0, None)))
    smaller = min(float(np.prod(hi_a - lo_a)), float(np.prod(hi_b - lo_b)))
    fraction = inter / smaller if smaller > 0 else 0.0
    if fraction < MIN_OVERLAP:
        raise _fail(
            case,
            f"the grids cannot be brought together: the field of view of {what} file {path} overlaps that "
            f"of the reference modality by {fraction:.0%} (at least {MIN_OVERLAP:.0%} needed)",
        )


def _same_grid(img: nib.Nifti1Image, ref: nib.Nifti1Image) -> bool:
    return img.shape[:3] == ref.shape[:3] and np.allclose(img.affine, ref.affine, atol=1e-3)


def _onto_reference(
    case: BratsCase, what: str, path: object, img: nib.Nifti1Image, ref: nib.Nifti1Image, order: int
) -> np.ndarray:
    """The data of ``img`` on the grid of ``ref``; NaN where ``img`` does not reach (images only)."""
    if _same_grid(img, ref):
        return np.asarray(img.dataobj, dtype=np.float32)
    _check_overlap(case, what, path, img, ref)
    cval = float("nan") if order else 0.0
    try:
        out = resample_from_to(img, (ref.shape[:3], ref.affine), order=order, mode="constant", cval=cval)
    except Exception as exc:
        raise _fail(
            case, f"the grids cannot be brought together: resampling {what} file {path} failed ({exc})"
        ) from None
    return np.asarray(out.dataobj, dtype=np.float32)


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of a 1-D array of values."""
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist, dtype=np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (s0 / w0 - (s0[-1] - s0) / w1) ** 2
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


def _foreground_mask(vols: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Head mask of data that are not skull-stripped: Otsu, largest component, holes filled."""
    total = np.zeros(vols.shape[1:], dtype=np.float32)
    count = coverage.sum(axis=0, dtype=np.float32)
    for vol, cov in zip(vols, coverage, strict=True):
        sample = vol[cov][::7]
        scale = float(np.percentile(np.abs(sample), 99)) if sample.size else 0.0
        if scale > 0:
            total += np.where(cov, np.clip(vol / scale, 0.0, 1.5), 0.0)
    mean = total / np.maximum(count, 1.0)
    inside = count > 0
    if not inside.any() or float(mean[inside].max()) <= 0.0:
        return np.zeros(mean.shape, dtype=bool)
    mask = (mean > _otsu(mean[inside][::3])) & inside
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    mask = ndimage.binary_fill_holes(mask)
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    return np.asarray(ndimage.binary_fill_holes(mask, structure=in_plane), dtype=bool)


def _crop_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    nonzero = (
        np.nonzero(mask.any(axis=(1, 2)))[0],
        np.nonzero(mask.any(axis=(0, 2)))[0],
        np.nonzero(mask.any(axis=(0, 1)))[0],
    )
    return tuple(
        slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, n))
        for idx, n in zip(nonzero, mask.shape, strict=True)
    )


def _aspect_padding(shape: tuple[int, ...], spacing: np.ndarray, roi: tuple[int, int, int]) -> list[tuple[int, int]]:
    """Centred padding that gives the crop the physical aspect of the ROI."""
    extent = np.asarray(shape) * spacing
    mm_per_roi_voxel = float(np.max(extent / np.asarray(roi)))
    target = np.maximum(np.rint(mm_per_roi_voxel * np.asarray(roi) / spacing).astype(int), shape)
    return [(int(t - n) // 2, int(t - n) - int(t - n) // 2) for t, n in zip(target, shape, strict=True)]


def _resize(
    image: np.ndarray, mask: np.ndarray, label: np.ndarray | None, roi: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Resize channels-first ``image``, ``mask`` and ``label`` to ``roi``."""
    factors = np.asarray(image.shape[1:]) / np.asarray(roi)
    sigma = np.maximum((factors - 1.0) / 2.0, 0.0)
    if sigma.max() > 0.1:
        image = np.stack([ndimage.gaussian_filter(ch, sigma=tuple(sigma), mode="constant") for ch in image])
    with torch.no_grad():
        img_t = F.interpolate(
            torch.from_numpy(np.ascontiguousarray(image))[None],
            size=roi,
            mode="trilinear",
            align_corners=False,
        )[0]
        mask_t = (
            F.interpolate(
                torch.from_numpy(mask.astype(np.float32))[None, None],
                size=roi,
                mode="trilinear",
                align_corners=False,
            )[0, 0]
            >= 0.5
        )
        out_label = None
        if label is not None:
            lab_t = F.interpolate(
                torch.from_numpy(label.astype(np.float32))[None, None], size=roi, mode="nearest-exact"
            )[0, 0]
            out_label = lab_t.numpy().astype(np.uint8)
        out_image = (img_t * mask_t).numpy().astype(np.float32)
    return out_image, mask_t.numpy(), out_label


def _on_reference(case: BratsCase, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray, Any]:
    """Every modality resampled onto the reference modality's grid (C, X, Y, Z) float32, a voxel no file covers
    set to 0; which voxels each modality covers; and the reference image."""
    loaded = {m: _load(case, m, case.images[m]) for m in MODALITIES}
    ref = loaded[config.reference]
    vols = np.empty((len(MODALITIES), *ref.shape[:3]), dtype=np.float32)
    for i, m in enumerate(MODALITIES):
        vols[i] = _onto_reference(case, m, case.images[m], loaded[m], ref, order=1)
    del loaded
    coverage = np.isfinite(vols)
    if not coverage.all():
        vols[~coverage] = 0.0
    return vols, coverage, ref


def _brain_mask(case: BratsCase, config: PreprocessConfig, vols: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """The brain: every covered non-zero voxel of a skull-stripped case, else the foreground of the head."""
    covered = coverage.any(axis=0)
    nonzero = (vols != 0).any(axis=0)
    zero_fraction = 1.0 - float(np.count_nonzero(nonzero & covered)) / max(int(np.count_nonzero(covered)), 1)
    mask = nonzero & covered if zero_fraction >= SKULL_STRIPPED_ZERO_FRACTION else _foreground_mask(vols, coverage)
    if not mask.any():
        raise _fail(
            case,
            f"no brain voxels found: every modality is zero or flat (reference file {case.images[config.reference]})",
        )
    return mask


def _zscore_inside(case: BratsCase, vols: np.ndarray, coverage: np.ndarray, mask: np.ndarray) -> None:
    """Each modality z-scored inside the brain (in place), 0 outside it."""
    for i, m in enumerate(MODALITIES):
        inside = mask & coverage[i]
        values = vols[i][inside].astype(np.float64)
        if values.size < 2:
            raise _fail(case, f"modality {m} (file {case.images[m]}) does not cover the brain of the reference grid")
        mean, std = float(values.mean()), float(values.std())
        if not np.isfinite(std) or std <= 1e-6 * max(1.0, abs(mean)):
            raise _fail(case, f"modality {m} (file {case.images[m]}) is constant inside the brain mask (std 0)")
        vols[i] = np.where(inside, (vols[i] - mean) / std, 0.0)


def prepare_case(case: BratsCase, config: PreprocessConfig) -> PreparedCase:
    """Read ``case`` and bring it into the ROI of ``config``; see the module docstring for the steps.

    Raises:
        CaseError: a file is unreadable, not 3-D, holds non-finite values or labels outside the
            case's label set; the grids cannot be brought together; no brain is found; or a
            modality is constant inside the brain.
    """
    vols, coverage, ref = _on_reference(case, config)

    label: np.ndarray | None = None
    if case.seg is not None:
        seg_img = _load(case, "segmentation", case.seg)
        label = _onto_reference(case, "segmentation", case.seg, seg_img, ref, order=0)
        values = np.unique(label)
        allowed = (0, 1, 2, case.enhancing_label)
        unexpected = [int(v) if float(v).is_integer() else v for v in values.tolist() if v not in allowed]
        if unexpected:
            raise _fail(
                case,
                f"segmentation file {case.seg} holds label value(s) {unexpected[:10]}; expected only "
                f"{', '.join(str(a) for a in allowed)} (BraTS {case.naming} labels)",
            )

    mask = _brain_mask(case, config, vols, coverage)
    box = _crop_box(mask | (label > 0) if label is not None else mask, config.margin_vox)
    vols, coverage, mask = vols[(slice(None), *box)], coverage[(slice(None), *box)], mask[box]
    if label is not None:
        label = label[box]
    _zscore_inside(case, vols, coverage, mask)

    spacing = np.linalg.norm(ref.affine[:3, :3], axis=0)
    pad = _aspect_padding(mask.shape, spacing, config.roi)
    vols = np.pad(vols, [(0, 0), *pad])
    mask = np.pad(mask, pad)
    if label is not None:
        label = np.pad(label, pad)
    image, roi_mask, roi_label = _resize(vols, mask, label, config.roi)
    return PreparedCase(
        case_id=case.case_id,
        image=image,
        label=roi_label,
        enhancing_label=case.enhancing_label,
        brain_fraction=float(roi_mask.mean()),
    )


def prepare_cases(
    cases: Iterable[BratsCase], config: PreprocessConfig, *, on_problem: Literal["skip", "raise"] = "skip"
) -> tuple[list[PreparedCase], list[CaseProblem]]:
    """Prepare several cases; a case that fails becomes a :class:`CaseProblem` (or raises)."""
    if on_problem not in ("skip", "raise"):
        raise ConfigError(f"on_problem must be 'skip' or 'raise', got {on_problem!r}")
    prepared: list[PreparedCase] = []
    problems: list[CaseProblem] = []
    for case in cases:
        try:
            prepared.append(prepare_case(case, config))
        except CaseError as exc:
            if on_problem == "raise":
                raise
            problems.append(CaseProblem(case.case_id, case.folder, exc.reason))
    return prepared, problems
