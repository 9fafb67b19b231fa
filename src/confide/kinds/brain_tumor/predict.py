"""Using a trained brain-tumour model: what its file says, what a site keeps, a segmentation for a new case, and
its outputs on a test split for the report.

- ``model_io``: four modalities in, three region logits out.
- ``preprocessing``: none learnt from a site. Each case is normalised by itself (z-score of each modality inside its
  own brain mask), so ``preprocessing.json`` says so and holds no statistic.
- ``predict``: a case folder (BraTS 2021 or 2023 names, or other common modality names such as ``T1.nii.gz``,
  ``t1_gd.nii``, ``FLAIR.nii.gz``), or a folder of case folders -> one segmentation NIfTI per case on the grid of
  its ``t1c`` file (the same shape and affine), labels in BraTS convention: 1 necrotic core, 2 oedema, 4 enhancing
  tumour (BraTS 2018-2021), or 3 enhancing tumour when the case's files use BraTS 2023 names. A segmentation in
  the folder is ignored. ``out``: a ``.nii.gz`` / ``.nii`` file for one case, else a folder that gets
  ``<case>.nii.gz`` per case (the BraTS challenge's naming).
- ``outputs``: per test case its Dice and, for pictures, the axial slice where its true whole tumour is largest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from confide.api import ModelIO, Outputs, Place, Prediction, PredictRequest, Preprocessing, SegmentationSlices
from confide.api import device_of as _device_of
from confide.errors import CaseError, DataError, TaskError
from confide.kinds.brain_tumor.brats import MODALITIES, BratsCase, discover_cases, read_case_folder
from confide.kinds.brain_tumor.config import BrainTumorTaskConfig
from confide.kinds.brain_tumor.geometry import prepare_with_geometry, regions_to_input, regions_to_labels
from confide.kinds.brain_tumor.metrics import REGIONS, region_dice
from confide.kinds.brain_tumor.model import SegData
from confide.kinds.brain_tumor.preprocess import PreprocessConfig

FLAIR = MODALITIES.index("flair")
BATCH = 4
CONVENTIONS = {
    4: "BraTS 2018-2021 labels: 1 necrotic core, 2 oedema, 4 enhancing tumour",
    3: "BraTS 2023 labels: 1 necrotic core, 2 oedema, 3 enhancing tumour",
}


def model_io(config: BrainTumorTaskConfig) -> ModelIO:
    return ModelIO(
        inputs=f"four MRI modalities ({', '.join(MODALITIES)}), each z-scored inside the brain, fitted to the ROI "
        f"{list(config.roi)}",
        outputs=f"three region logits ({', '.join(r.upper() for r in REGIONS)}), each region where its logit > 0",
        classes=tuple(r.upper() for r in REGIONS),
        example_shape=(len(MODALITIES), *config.roi),
    )


def preprocessing(config: BrainTumorTaskConfig, place: Place) -> Preprocessing:
    return Preprocessing(
        description="per case, no site statistic: every modality reoriented to RAS and resampled onto the t1c grid, "
        "cropped to the brain, z-scored inside the case's own brain mask, padded and resized to the ROI "
        f"{list(config.roi)}; the prediction is brought back onto the t1c file's own grid",
    )


def find_cases(source: Path) -> list[BratsCase]:
    """The cases at ``source``: BraTS-named case folders under it, else ``source`` itself read as one case folder
    whose files use other common modality names (then labels are written in BraTS 2018-2021 convention)."""
    if not source.is_dir():
        raise DataError(f"brain-tumour input {source} is not a folder (give a case folder or a folder of cases)")
    try:
        cases, _ = discover_cases(source, require_seg=False)
    except DataError as found_none:
        try:
            return [read_case_folder(source, naming="2021")]
        except (CaseError, DataError) as exc:
            raise DataError(f"{exc}; as BraTS cases: {found_none}") from None
    return cases


def _output_path(out: Path, case: BratsCase, single: bool) -> Path:
    if single and out.name.lower().endswith((".nii.gz", ".nii")):
        out.parent.mkdir(parents=True, exist_ok=True)
        return out
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{case.case_id}.nii.gz"


def _write(labels: np.ndarray, reference: str, path: Path) -> None:
    ref: Any = nib.load(reference)
    header = ref.header.copy()
    header.set_data_dtype(np.uint8)
    image = nib.Nifti1Image(labels, ref.affine, header=header)
    image.header.set_slope_inter(1.0, 0.0)
    nib.save(image, str(path))


def predict(config: BrainTumorTaskConfig, model: Any, request: PredictRequest) -> Prediction:
    """A segmentation NIfTI per case at ``request.inputs`` (see the module docstring)."""
    cases = find_cases(Path(request.inputs))
    prep = PreprocessConfig(roi=config.roi)
    written: list[Path] = []
    conventions: set[int] = set()
    for case in cases:
        image, geometry = prepare_with_geometry(case, prep)
        with torch.no_grad():
            logits = model(torch.from_numpy(image[None]).to(_device_of(model))).float().cpu().numpy()[0]
        regions = regions_to_input(logits, geometry)
        labels = regions_to_labels(regions, case.enhancing_label)
        target = _output_path(Path(request.out), case, single=len(cases) == 1)
        _write(labels, geometry.reference, target)
        written.append(target)
        conventions.add(case.enhancing_label)
    grid = "each segmentation lies on its case's t1c grid (same shape and affine)"
    notes = (*(CONVENTIONS[c] for c in sorted(conventions, reverse=True)), grid)
    return Prediction(files=tuple(written), count=len(written), notes=notes)


def region_masks(model: Any, images: np.ndarray) -> np.ndarray:
    """Boolean region masks (N, 3, *roi) for prepared images (N, 4, *roi): each region where its logit > 0, in
    batches of :data:`BATCH` (as the task's ``evaluate`` takes them)."""
    device = _device_of(model)
    parts = [
        (model(torch.from_numpy(images[start : start + BATCH]).to(device)) > 0).cpu().numpy()
        for start in range(0, images.shape[0], BATCH)
    ]
    return np.concatenate(parts)


def outputs(config: BrainTumorTaskConfig, model: Any, data: Any) -> Outputs:
    """Each test case's Dice, and one axial slice per case for pictures (where its true whole tumour is largest)."""
    if not isinstance(data, SegData):
        raise TaskError(f"the brain-tumour task reads SegData, got {type(data).__name__}")
    with torch.no_grad():
        predicted = region_masks(model, data.images)
    scores = np.array([region_dice(predicted[i], data.regions[i])["dice_mean"] for i in range(len(data))])
    slices = [int(np.argmax(data.regions[i, 0].sum(axis=(0, 1)))) for i in range(len(data))]

    def axial(volume: np.ndarray, z: int) -> np.ndarray:
        """An axial slice of a RAS volume (x, y, z) with anterior up and the patient's right on the right."""
        return np.flipud(volume[..., z].T)

    images = np.stack([axial(data.images[i, FLAIR], z) for i, z in enumerate(slices)])
    truth = np.stack([np.stack([axial(r, z) for r in data.regions[i]]) for i, z in enumerate(slices)])
    pred = np.stack([np.stack([axial(r, z) for r in predicted[i]]) for i, z in enumerate(slices)])
    view = SegmentationSlices(
        images=images.astype(np.float32),
        truth=truth.astype(bool),
        predicted=pred.astype(bool),
        regions=tuple(r.upper() for r in REGIONS),
        case_ids=tuple(data.case_ids),
        scores=scores,
    )

    def headline(indices: np.ndarray) -> float:
        return float(np.mean(scores[indices])) if len(indices) else float("nan")

    return Outputs(n=len(data), headline=headline, view=view, per_example=np.asarray(scores, dtype=np.float64))
