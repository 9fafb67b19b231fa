"""Tests of confide.kinds.brain_tumor.preprocess on small synthetic NIfTI cases and on the two real cases."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import pytest

from confide.errors import CaseError, ConfigError
from confide.kinds.brain_tumor.brats import MODALITIES, BratsCase, discover_cases, labels_to_regions, read_case_folder
from confide.kinds.brain_tumor.preprocess import PreprocessConfig, prepare_case, prepare_cases

SUFFIX = {"2021": {"t1": "_t1", "t1c": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
          "2023": {"t1": "-t1n", "t1c": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"}}  # fmt: skip


def grid(shape: tuple[int, int, int], spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """An affine that puts the centre of the grid at world (0, 0, 0)."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -np.asarray(spacing) * (np.asarray(shape) - 1) / 2
    return affine


def anatomy(
    shape: tuple[int, ...], affine: np.ndarray, index: int, stripped: bool, radii: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Intensities of modality ``index`` and the 2021 label map, sampled in world space."""
    ijk = np.indices(shape).reshape(3, -1).astype(float)
    x, y, z = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *shape)
    r = (x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2
    d = np.sqrt((x - 6) ** 2 + (y - 4) ** 2 + z**2)
    label = np.select([d < 2.5, d < 4.5, d < 7], [1, 4, 2], 0).astype(np.uint8) * (r <= 1)
    texture = 100 + 30 * np.sin(x / 4 + index) * np.cos(y / 5) + 10 * index * np.sin(z / 3)
    value = np.where(r <= 1, texture + 40 * (label > 0) * (index + 1), 0.0)
    if not stripped:
        value = value + np.where((r > 1) & (r <= 1.3), 160.0, 0.0) + 2 + np.abs(np.sin(x * y + z))
    return value.astype(np.float32), label


def write_case(
    folder: Path,
    naming: str = "2021",
    *,
    shape: tuple[int, int, int] = (40, 44, 36),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    stripped: bool = True,
    seg: bool = True,
    radii: tuple[float, float, float] = (14.0, 17.0, 12.0),
    grids: dict[str, np.ndarray] | None = None,
    shapes: dict[str, tuple[int, int, int]] | None = None,
    enhancing: int | None = None,
) -> BratsCase:
    """Write a phantom case; ``grids``/``shapes`` put single modalities on other grids."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, part in enumerate((*MODALITIES, "seg") if seg else MODALITIES):
        affine = (grids or {}).get(part, grid(shape, spacing))
        part_shape = (shapes or {}).get(part, shape)
        value, label = anatomy(part_shape, affine, min(index, 3), stripped, radii)
        if part == "seg":
            label[label == 4] = enhancing or (4 if naming == "2021" else 3)
        data = label if part == "seg" else value
        nib.save(nib.Nifti1Image(data, affine), folder / f"{folder.name}{SUFFIX[naming][part]}.nii.gz")
    cases, problems = discover_cases(folder)
    assert problems == []
    return cases[0]


def load(path: Path | None) -> nib.Nifti1Image:
    assert path is not None
    return cast(nib.Nifti1Image, nib.load(path))


def real_data_dir() -> Path:
    default = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return Path(os.environ.get("CONFIDE_DATA", str(default)))


def extent(mask: np.ndarray, axis: int) -> int:
    idx = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
    return int(idx[-1] - idx[0] + 1)


def test_without_resizing_every_brain_voxel_is_z_scored_and_the_rest_is_zero(tmp_path: Path) -> None:
    case = write_case(tmp_path / "c1")
    raw = np.stack([np.asarray(load(case.images[m]).dataobj) for m in MODALITIES])
    brain = (raw != 0).any(axis=0)
    side = max(extent(brain, a) for a in range(3)) + 2 * 2  # bounding box + margin, padded to a cube
    config = PreprocessConfig(roi=(side, side, side), margin_vox=2)

    prepared = prepare_case(case, config)

    inside = (prepared.image != 0).any(axis=0)
    assert prepared.image.shape == (4, side, side, side)
    assert prepared.image.dtype == np.float32
    assert int(inside.sum()) == int(brain.sum())
    for channel in prepared.image:
        assert abs(float(channel[inside].mean())) < 1e-4
        assert abs(float(channel[inside].std()) - 1.0) < 1e-4
    assert prepared.brain_fraction == pytest.approx(brain.sum() / side**3)
    assert prepared.label is not None and prepared.label.dtype == np.uint8
    raw_label = np.asarray(load(case.seg).dataobj)
    tumour_counts = np.bincount(prepared.label.ravel(), minlength=5)[1:]
    assert tumour_counts.tolist() == np.bincount(raw_label.ravel(), minlength=5)[1:].tolist()
    assert tumour_counts.sum() > 0


def test_resized_output_has_roi_shape_zeros_outside_and_z_scores_inside(tmp_path: Path) -> None:
    case = write_case(tmp_path / "c2", "2023", shape=(60, 64, 50), radii=(24.0, 28.0, 20.0))

    prepared = prepare_case(case, PreprocessConfig(roi=(24, 20, 16)))

    assert prepared.image.shape == (4, 24, 20, 16)
    assert prepared.image.dtype == np.float32
    assert prepared.enhancing_label == 3
    inside = (prepared.image != 0).any(axis=0)
    assert inside.mean() == pytest.approx(prepared.brain_fraction, abs=0.02)
    assert 0.2 < prepared.brain_fraction < 0.8
    for channel in prepared.image:
        assert abs(float(channel[inside].mean())) < 0.15
        assert 0.7 < float(channel[inside].std()) < 1.1
    assert prepared.label is not None and prepared.label.shape == (24, 20, 16)
    assert set(np.unique(prepared.label).tolist()) <= {0, 1, 2, 3}
    assert (prepared.label == 3).any()


def test_physical_aspect_is_kept_for_anisotropic_voxels(tmp_path: Path) -> None:
    # Brain 48 mm wide in x and y and 30 mm tall in z, sampled with 3 mm slices.
    case = write_case(
        tmp_path / "aniso", shape=(60, 60, 16), spacing=(1.0, 1.0, 3.0), radii=(24.0, 24.0, 15.0), seg=False
    )

    prepared = prepare_case(case, PreprocessConfig(roi=(32, 32, 32), margin_vox=0))

    inside = (prepared.image != 0).any(axis=0)
    x, y, z = (extent(inside, a) for a in range(3))
    assert abs(x - y) <= 1
    assert 0.5 < z / x < 0.75  # 30 mm / 48 mm = 0.625
    assert prepared.label is None


def test_overlapping_grids_are_resampled_onto_the_reference(tmp_path: Path) -> None:
    shape = (40, 44, 36)
    # t2: coarser voxels, other shape, flipped x axis (LAS); flair: shifted by 5 mm.
    t2_affine = grid((28, 30, 20), (1.5, 1.5, 2.0))
    t2_affine[0, 0] *= -1
    t2_affine[0, 3] *= -1
    flair_affine = grid(shape)
    flair_affine[:3, 3] += 5.0
    case = write_case(
        tmp_path / "grids",
        grids={"t2": t2_affine, "flair": flair_affine},
        shapes={"t2": (28, 30, 20)},
    )

    prepared = prepare_case(case, PreprocessConfig(roi=(32, 32, 32)))

    assert prepared.image.shape == (4, 32, 32, 32)
    assert np.isfinite(prepared.image).all()
    inside = (prepared.image != 0).all(axis=0)
    t1c, t2 = prepared.image[1][inside], prepared.image[2][inside]
    # Same anatomy in world space: after resampling the channels agree with each other and with the
    # label (the phantom tumour is bright in every modality); a mirrored t2 would correlate ~0.6.
    assert float(np.corrcoef(t1c, t2)[0, 1]) > 0.85
    assert prepared.label is not None and (prepared.label == 4).any()
    tumour = prepared.label > 0
    for channel in prepared.image:
        assert float(channel[tumour].mean()) > float(channel[inside & ~tumour].mean()) + 1.0


def test_grids_that_do_not_overlap_cannot_be_brought_together(tmp_path: Path) -> None:
    far = grid((40, 44, 36))
    far[:3, 3] += 300.0
    case = write_case(tmp_path / "far", grids={"flair": far})

    with pytest.raises(CaseError, match="grids cannot be brought together") as info:
        prepare_case(case, PreprocessConfig())

    assert "far_flair.nii.gz" in str(info.value)
    assert info.value.case_id == "far"


def test_singular_affine_is_a_case_error(tmp_path: Path) -> None:
    case = write_case(tmp_path / "sing")
    img = load(case.images["t1"])
    flat = img.affine.copy()
    flat[2, 2] = 0.0
    img.set_sform(flat, code=1)
    img.set_qform(None, code=0)
    nib.save(img, case.images["t1"])

    with pytest.raises(CaseError, match=r"sing_t1\.nii\.gz.*singular"):
        prepare_case(case, PreprocessConfig())


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_file_is_named_and_other_cases_still_prepare(tmp_path: Path, damage: str) -> None:
    write_case(tmp_path / "good", seg=False)
    bad = write_case(tmp_path / "bad", seg=False)
    path = bad.images["t2"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a nifti file" * 50)

    cases, problems = discover_cases(tmp_path)
    prepared, failed = prepare_cases(cases, PreprocessConfig(roi=(16, 16, 16)))

    assert problems == [] and [c.case_id for c in cases] == ["bad", "good"]
    assert [p.case_id for p in prepared] == ["good"]
    assert [p.case_id for p in failed] == ["bad"]
    assert "bad_t2.nii.gz" in failed[0].reason and "cannot read" in failed[0].reason
    with pytest.raises(CaseError, match=r"bad_t2\.nii\.gz"):
        prepare_case(bad, PreprocessConfig())


def test_four_dimensional_file_is_rejected(tmp_path: Path) -> None:
    case = write_case(tmp_path / "four", seg=False)
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4)), case.images["flair"])

    with pytest.raises(CaseError, match=r"four_flair\.nii\.gz has shape \(8, 8, 8, 3\).*3-D"):
        prepare_case(case, PreprocessConfig())


def test_non_finite_voxels_are_rejected(tmp_path: Path) -> None:
    case = write_case(tmp_path / "nan", seg=False)
    img = load(case.images["t1c"])
    data = np.asarray(img.dataobj).copy()
    data[3, 3, 3] = np.nan
    data[4, 4, 4] = np.inf
    nib.save(nib.Nifti1Image(data, img.affine), case.images["t1c"])

    with pytest.raises(CaseError, match=r"nan_t1ce\.nii\.gz holds 2 non-finite"):
        prepare_case(case, PreprocessConfig())


def test_modality_constant_inside_the_brain_is_rejected(tmp_path: Path) -> None:
    case = write_case(tmp_path / "flat", seg=False)
    img = load(case.images["t2"])
    data = (np.asarray(img.dataobj) != 0).astype(np.float32) * 50
    nib.save(nib.Nifti1Image(data, img.affine), case.images["t2"])

    with pytest.raises(CaseError, match=r"t2 \(file .*flat_t2\.nii\.gz\) is constant"):
        prepare_case(case, PreprocessConfig())


def test_label_of_the_other_scheme_is_rejected_naming_the_file(tmp_path: Path) -> None:
    case = write_case(tmp_path / "lab", "2023", enhancing=4)  # 2023 labels use 3 for enhancing

    with pytest.raises(CaseError, match=r"lab-seg\.nii\.gz holds label value\(s\) \[4\]"):
        prepare_case(case, PreprocessConfig())


def test_head_without_skull_stripping_is_masked_by_foreground(tmp_path: Path) -> None:
    case = write_case(tmp_path / "head", shape=(48, 52, 40), stripped=False)

    prepared = prepare_case(case, PreprocessConfig(roi=(24, 24, 24), margin_vox=0))

    inside = (prepared.image != 0).any(axis=0)
    # The head (brain + skull shell) is an ellipsoid filling ~30 % of its bounding cube; the
    # background around it was cut away.
    assert 0.25 < prepared.brain_fraction < 0.4
    assert inside.mean() == pytest.approx(prepared.brain_fraction, abs=0.03)
    assert inside[12, 12, 12] and not inside[0, 0, 0]
    assert prepared.label is not None
    regions = labels_to_regions(prepared.label, prepared.enhancing_label)
    assert regions[2].sum() > 0 and regions[0].sum() > regions[1].sum() > regions[2].sum()


@pytest.mark.parametrize("kwargs", [{"roi": (0, 64, 64)}, {"roi": (64, 64)}, {"margin_vox": -1}, {"reference": "t1ce"}])
def test_invalid_config_is_a_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PreprocessConfig(**kwargs)  # type: ignore[arg-type]


def test_real_tcga_case_on_three_grids_prepares() -> None:
    folder = real_data_dir() / "brain_mri" / "TCGA-FG-6692"
    if not folder.is_dir():
        pytest.skip(f"real TCGA case not found at {folder}; set CONFIDE_DATA to the shared data folder")
    case = read_case_folder(folder)

    start = time.process_time()  # CPU time (every thread's): the wall clock of a loaded machine says nothing
    prepared = prepare_case(case, PreprocessConfig())
    seconds = time.process_time() - start

    assert prepared.image.shape == (4, 64, 64, 64)
    assert np.isfinite(prepared.image).all()
    assert 0.2 < prepared.brain_fraction < 0.8
    for channel in prepared.image:
        assert float(channel.std()) > 0.3
    assert seconds < 20


def test_real_brats_2023_case_is_discovered_and_prepares() -> None:
    root = real_data_dir() / "brain_mri" / "brats_format_case"
    if not root.is_dir():
        pytest.skip(f"real BraTS-format case not found at {root}; set CONFIDE_DATA to the shared data folder")
    cases, _ = discover_cases(root)

    start = time.process_time()  # CPU time (every thread's): the wall clock of a loaded machine says nothing
    prepared = prepare_case(cases[0], PreprocessConfig())
    seconds = time.process_time() - start

    assert cases[0].naming == "2023"
    assert prepared.image.shape == (4, 64, 64, 64)
    assert np.isfinite(prepared.image).all()
    assert prepared.label is None
    # About 11 % of the 240x240x155 volume is brain; inside its bounding cube that is 10-40 %.
    assert 0.1 < prepared.brain_fraction < 0.4
    assert seconds < 20
