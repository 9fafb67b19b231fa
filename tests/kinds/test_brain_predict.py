"""A brain-tumour model run on a new case: prepared as training prepared its cases, and its regions brought back
into the input's own space (shape, affine, orientation) as BraTS labels."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from confide.api import PredictRequest
from confide.errors import DataError
from confide.kinds.brain_tumor.brats import MODALITIES, discover_cases, labels_to_regions
from confide.kinds.brain_tumor.config import BrainTumorTaskConfig
from confide.kinds.brain_tumor.geometry import Geometry, prepare_with_geometry, regions_to_input, regions_to_labels
from confide.kinds.brain_tumor.metrics import dice
from confide.kinds.brain_tumor.model import build_model
from confide.kinds.brain_tumor.predict import find_cases, predict
from confide.kinds.brain_tumor.preprocess import PreprocessConfig, prepare_case

CONFIG = BrainTumorTaskConfig(init_filters=4, roi=(16, 16, 16))


@pytest.fixture(scope="module")
def case_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from confide.kinds.brain_tumor.phantom_writer import write_federation

    root = tmp_path_factory.mktemp("phantoms")
    write_federation(root, sites=1, cases=2, seed=0)
    return next(p for p in sorted((root / "site-1").iterdir()) if p.is_dir())


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(CONFIG).eval()


def test_a_new_case_is_prepared_exactly_as_training_prepared_it(case_folder: Path) -> None:
    case = discover_cases(case_folder)[0][0]
    config = PreprocessConfig(roi=(32, 32, 32))

    image, geometry = prepare_with_geometry(case, config)
    trained = prepare_case(case, config)  # with its segmentation: the crop must not depend on it here

    np.testing.assert_array_equal(image, trained.image)
    stored: Any = nib.load(str(case.images["t1c"]))
    assert geometry.shape == stored.shape and np.allclose(geometry.affine, stored.affine)


def _into_roi(volume: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A RAS-grid mask cropped, padded and resized to the ROI as the preparation does (nearest)."""
    crop = np.pad(volume[geometry.box], geometry.pad)
    return F.interpolate(torch.from_numpy(crop.astype(np.float32))[None, None], size=geometry.roi, mode="nearest")[
        0, 0
    ].numpy()


def test_regions_in_the_roi_come_back_onto_the_input_grid_where_they_were(case_folder: Path) -> None:
    case = discover_cases(case_folder)[0][0]
    _, geometry = prepare_with_geometry(case, PreprocessConfig(roi=(48, 48, 48)))
    seg: Any = nib.load(str(case.seg))
    truth = labels_to_regions(np.asarray(seg.dataobj), 4)
    ras = nib.as_closest_canonical(nib.Nifti1Image(truth[0].astype(np.uint8), seg.affine))
    logits = np.stack([np.where(_into_roi(np.asarray(ras.dataobj), geometry) > 0.5, 4.0, -4.0)] * 3)

    back = regions_to_input(logits, geometry)

    assert back.shape == (3, *geometry.shape)
    assert dice(back[0], truth[0]) > 0.8  # only the ROI's coarser grid is lost


def test_an_input_stored_in_another_orientation_gets_its_labels_in_that_orientation(
    case_folder: Path, tmp_path: Path
) -> None:
    flipped = tmp_path / "flipped"
    flipped.mkdir()
    for path in case_folder.iterdir():
        img: Any = nib.load(str(path))
        turn = np.diag([-1.0, 1.0, 1.0, 1.0])
        turn[0, 3] = img.shape[0] - 1  # voxel i becomes n-1-i: the same world position
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1], img.affine @ turn), str(flipped / path.name))
    model = _model()

    predict(CONFIG, model, PredictRequest(case_folder, tmp_path / "a.nii.gz"))
    predict(CONFIG, model, PredictRequest(flipped, tmp_path / "b.nii.gz"))

    a: Any = nib.load(str(tmp_path / "a.nii.gz"))
    b: Any = nib.load(str(tmp_path / "b.nii.gz"))
    original: Any = nib.load(str(next(flipped.glob("*_t1ce.nii.gz"))))
    assert np.allclose(b.affine, original.affine) and b.shape == original.shape
    np.testing.assert_array_equal(np.asarray(b.dataobj)[::-1], np.asarray(a.dataobj))
    assert set(np.unique(np.asarray(a.dataobj)).tolist()) <= {0, 1, 2, 4}


def test_brats_2023_names_get_the_2023_labels_and_every_case_of_a_folder_its_file(
    case_folder: Path, tmp_path: Path
) -> None:
    renamed = tmp_path / "cases" / "BraTS-GLI-00001-000"
    renamed.mkdir(parents=True)
    names = {"_t1.": "-t1n.", "_t1ce.": "-t1c.", "_t2.": "-t2w.", "_flair.": "-t2f."}
    for path in case_folder.iterdir():
        for old, new in names.items():
            if old in path.name:
                shutil.copy(path, renamed / f"BraTS-GLI-00001-000{new}nii.gz")
    shutil.copytree(case_folder, tmp_path / "cases" / case_folder.name)

    done = predict(CONFIG, _model(), PredictRequest(tmp_path / "cases", tmp_path / "out"))

    assert sorted(p.name for p in done.files) == sorted([f"{case_folder.name}.nii.gz", "BraTS-GLI-00001-000.nii.gz"])
    assert any("BraTS 2023" in note for note in done.notes) and any("BraTS 2018-2021" in note for note in done.notes)


def test_labels_follow_the_nested_regions() -> None:
    regions = np.zeros((3, 4), dtype=bool)
    regions[0, 1:] = True  # WT
    regions[1, 2:] = True  # TC
    regions[2, 3:] = True  # ET

    assert regions_to_labels(regions, 4).tolist() == [0, 2, 1, 4]
    assert regions_to_labels(regions, 3).tolist() == [0, 2, 1, 3]


def test_a_case_missing_a_modality_is_refused_naming_it(case_folder: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(case_folder, partial)
    next(partial.glob("*_flair.nii.gz")).unlink()

    with pytest.raises(DataError, match="missing modality 'flair'"):
        find_cases(partial)
    assert MODALITIES[-1] == "flair"
