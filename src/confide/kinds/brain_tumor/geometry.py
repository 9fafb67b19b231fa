"""A new case prepared for a model as training prepared its cases, and the model's regions brought back into the
input's own space.

:func:`prepare_with_geometry` runs the steps of :func:`confide.kinds.brain_tumor.preprocess.prepare_case` (its own
helpers: RAS, every modality on the reference grid, the brain mask, the crop, the z-score inside the brain, the
padding to the ROI's aspect, the resize) on a case without a segmentation, and records where each step put the
voxels. :func:`regions_to_input` inverts them: the ROI's logits resized back to the padded crop, the padding
removed, the crop put back at its place in the reference grid, the RAS reorientation undone. The result lies on
the grid of the reference modality file (``t1c`` unless the preprocessing says otherwise): its shape and affine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from confide.errors import CaseError
from confide.kinds.brain_tumor.brats import BratsCase
from confide.kinds.brain_tumor.preprocess import (
    PreprocessConfig,
    _aspect_padding,
    _brain_mask,
    _crop_box,
    _on_reference,
    _resize,
    _zscore_inside,
)


@dataclass(frozen=True)
class Geometry:
    """Where the preparation of one case put its voxels (see the module docstring)."""

    reference: str  # the file whose grid the input space is
    shape: tuple[int, int, int]  # the reference file's voxel grid, as stored
    affine: np.ndarray  # the reference file's affine, as stored
    ras_shape: tuple[int, int, int]  # the grid after reorientation to RAS
    box: tuple[slice, slice, slice]  # the crop, in the RAS grid
    pad: tuple[tuple[int, int], ...]  # the padding of the crop to the ROI's aspect
    roi: tuple[int, int, int]


def _stored(case: BratsCase, reference: str) -> tuple[tuple[int, int, int], np.ndarray]:
    path = case.images[reference]
    try:
        img: Any = nib.load(str(path))
    except Exception as exc:
        raise CaseError(case.case_id, f"cannot read {reference} file {path}: {type(exc).__name__}: {exc}") from None
    shape = tuple(int(n) for n in img.shape[:3])
    return (shape[0], shape[1], shape[2]), np.asarray(img.affine, dtype=np.float64)


def prepare_with_geometry(case: BratsCase, config: PreprocessConfig) -> tuple[np.ndarray, Geometry]:
    """The case's image (4, *roi) as :func:`prepare_case` makes it (its segmentation, if any, is not read), and
    its geometry. Raises :class:`CaseError` as :func:`prepare_case` does."""
    case = replace(case, seg=None)
    shape, affine = _stored(case, config.reference)
    vols, coverage, ref = _on_reference(case, config)
    mask = _brain_mask(case, config, vols, coverage)
    box = _crop_box(mask, config.margin_vox)
    vols, coverage, mask = vols[(slice(None), *box)], coverage[(slice(None), *box)], mask[box]
    _zscore_inside(case, vols, coverage, mask)
    spacing = np.linalg.norm(ref.affine[:3, :3], axis=0)
    pad = _aspect_padding(mask.shape, spacing, config.roi)
    image, _, _ = _resize(np.pad(vols, [(0, 0), *pad]), np.pad(mask, pad), None, config.roi)
    ras = tuple(int(n) for n in ref.shape[:3])
    geometry = Geometry(
        reference=str(case.images[config.reference]),
        shape=shape,
        affine=affine,
        ras_shape=(ras[0], ras[1], ras[2]),
        box=(box[0], box[1], box[2]),
        pad=tuple((int(a), int(b)) for a, b in pad),
        roi=config.roi,
    )
    return image, geometry


def regions_to_input(logits: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Region masks (3, *shape) bool on the reference file's own grid from the model's logits (3, *roi)."""
    if logits.shape[1:] != geometry.roi:
        raise ValueError(f"logits {logits.shape} do not fit the ROI {geometry.roi}")
    crop = tuple(s.stop - s.start for s in geometry.box)
    padded = tuple(n + a + b for n, (a, b) in zip(crop, geometry.pad, strict=True))
    with torch.no_grad():
        back = F.interpolate(
            torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))[None],
            size=padded,
            mode="trilinear",
            align_corners=False,
        )[0].numpy()
    inner = tuple(slice(a, a + n) for (a, _), n in zip(geometry.pad, crop, strict=True))
    ras = np.zeros((logits.shape[0], *geometry.ras_shape), dtype=bool)
    ras[(slice(None), *geometry.box)] = back[(slice(None), *inner)] > 0
    to_stored = ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(geometry.affine))
    out = np.stack([apply_orientation(channel, to_stored) for channel in ras]).astype(bool)
    if out.shape[1:] != geometry.shape:
        raise ValueError(f"regions of shape {out.shape[1:]} after reorientation, the input has {geometry.shape}")
    return out


def regions_to_labels(regions: np.ndarray, enhancing_label: int) -> np.ndarray:
    """BraTS labels (uint8) from the three nested regions (WT, TC, ET): 2 oedema where only WT, 1 necrotic core
    where TC, ``enhancing_label`` (4 in BraTS 2018-2021, 3 in BraTS 2023) where ET; 0 elsewhere."""
    if regions.shape[0] != 3:
        raise ValueError(f"expected three regions (WT, TC, ET), got {regions.shape[0]}")
    labels = np.zeros(regions.shape[1:], dtype=np.uint8)
    labels[regions[0]] = 2
    labels[regions[1]] = 1
    labels[regions[2]] = enhancing_label
    return labels
