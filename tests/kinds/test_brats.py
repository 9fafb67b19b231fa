"""Tests of confide.kinds.brain_tumor.brats: finding BraTS cases by file name and turning labels into regions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from confide.errors import CaseError, ConfigError, DataError
from confide.kinds.brain_tumor.brats import MODALITIES, BratsCase, discover_cases, labels_to_regions, read_case_folder

SUFFIXES_2021 = {"t1": "_t1", "t1c": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"}
SUFFIXES_2023 = {"t1": "-t1n", "t1c": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"}


def make_case(
    folder: Path,
    case_id: str,
    naming: str,
    *,
    parts: tuple[str, ...] = (*MODALITIES, "seg"),
    ext: str = ".nii.gz",
) -> Path:
    """Create empty files named like a BraTS case (discovery reads names only)."""
    suffixes = SUFFIXES_2021 if naming == "2021" else SUFFIXES_2023
    folder.mkdir(parents=True, exist_ok=True)
    for part in parts:
        (folder / f"{case_id}{suffixes[part]}{ext}").touch()
    return folder


def real_data_dir() -> Path:
    default = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return Path(os.environ.get("CONFIDE_DATA", str(default)))


def test_discovers_a_2021_case_and_maps_t1ce_to_t1c(tmp_path: Path) -> None:
    folder = make_case(tmp_path / "BraTS2021_00001", "BraTS2021_00001", "2021")

    cases, problems = discover_cases(tmp_path)

    assert problems == []
    assert len(cases) == 1
    case = cases[0]
    assert case.case_id == "BraTS2021_00001"
    assert case.naming == "2021"
    assert case.enhancing_label == 4
    assert list(case.images) == list(MODALITIES)
    assert case.images["t1c"] == folder / "BraTS2021_00001_t1ce.nii.gz"
    assert case.images["t1"] == folder / "BraTS2021_00001_t1.nii.gz"
    assert case.seg == folder / "BraTS2021_00001_seg.nii.gz"


def test_discovers_an_uncompressed_2023_case_without_segmentation(tmp_path: Path) -> None:
    name = "BraTS-GLI-00002-000"
    folder = make_case(tmp_path / name, name, "2023", parts=MODALITIES, ext=".nii")

    cases, problems = discover_cases(tmp_path)

    assert problems == []
    assert [c.naming for c in cases] == ["2023"]
    assert cases[0].enhancing_label == 3
    assert cases[0].seg is None
    assert cases[0].images["flair"] == folder / f"{name}-t2f.nii"
    assert cases[0].images["t2"] == folder / f"{name}-t2w.nii"


def test_root_holding_the_files_is_itself_a_case(tmp_path: Path) -> None:
    root = make_case(tmp_path / "single", "P7", "2023")

    cases, _ = discover_cases(root)

    assert [(c.case_id, c.folder) for c in cases] == [("single", root)]


def test_cases_are_sorted_and_both_schemes_can_live_under_one_root(tmp_path: Path) -> None:
    make_case(tmp_path / "b" / "case2", "case2", "2021")
    make_case(tmp_path / "a" / "case1", "case1", "2023")
    make_case(tmp_path / "c", "case3", "2021")

    cases, problems = discover_cases(tmp_path)

    assert problems == []
    assert [(c.case_id, c.naming) for c in cases] == [("case1", "2023"), ("case2", "2021"), ("c", "2021")]


def test_missing_modality_becomes_a_problem_naming_it_and_other_cases_survive(tmp_path: Path) -> None:
    make_case(tmp_path / "good", "good", "2021")
    make_case(tmp_path / "bad", "bad", "2021", parts=("t1", "t1c", "t2", "seg"))

    cases, problems = discover_cases(tmp_path)

    assert [c.case_id for c in cases] == ["good"]
    assert [p.case_id for p in problems] == ["bad"]
    assert "'flair'" in problems[0].reason
    assert problems[0].folder == tmp_path / "bad"


def test_missing_modality_raises_case_error_when_asked(tmp_path: Path) -> None:
    make_case(tmp_path / "bad", "bad", "2023", parts=("t1", "t2", "flair"))

    with pytest.raises(CaseError, match="'t1c'") as info:
        discover_cases(tmp_path, on_problem="raise")

    assert info.value.case_id == "bad"


def test_two_files_for_one_modality_are_a_problem_naming_both(tmp_path: Path) -> None:
    folder = make_case(tmp_path / "dup", "dup", "2021")
    (folder / "dup_t2.nii").touch()
    make_case(tmp_path / "fine", "fine", "2021")

    cases, problems = discover_cases(tmp_path)

    assert [c.case_id for c in cases] == ["fine"]
    assert len(problems) == 1
    assert "'t2'" in problems[0].reason
    assert "dup_t2.nii.gz" in problems[0].reason
    assert "dup_t2.nii," in problems[0].reason


def test_mixed_naming_schemes_in_one_folder_are_a_problem(tmp_path: Path) -> None:
    folder = make_case(tmp_path / "mixed", "mixed", "2021", parts=("t1", "t2", "flair"))
    (folder / "mixed-t1c.nii.gz").touch()
    make_case(tmp_path / "ok", "ok", "2023")

    _, problems = discover_cases(tmp_path)

    assert len(problems) == 1
    assert "mix" in problems[0].reason
    assert "mixed-t1c.nii.gz" in problems[0].reason


def test_files_of_different_patients_in_one_folder_are_a_problem(tmp_path: Path) -> None:
    folder = make_case(tmp_path / "p1", "p1", "2021", parts=("t1", "t1c", "t2"))
    (folder / "p2_flair.nii.gz").touch()
    make_case(tmp_path / "ok", "ok", "2023")

    _, problems = discover_cases(tmp_path)

    assert len(problems) == 1
    assert "different cases" in problems[0].reason
    assert "p2_flair.nii.gz" in problems[0].reason


def test_require_seg_turns_a_case_without_segmentation_into_a_problem(tmp_path: Path) -> None:
    make_case(tmp_path / "noseg", "noseg", "2021", parts=MODALITIES)
    make_case(tmp_path / "withseg", "withseg", "2021")

    cases, problems = discover_cases(tmp_path, require_seg=True)

    assert [c.case_id for c in cases] == ["withseg"]
    assert [p.case_id for p in problems] == ["noseg"]
    assert "segmentation" in problems[0].reason


def test_hidden_files_and_other_files_are_ignored(tmp_path: Path) -> None:
    folder = make_case(tmp_path / "c1", "c1", "2021")
    (folder / "._c1_t1.nii.gz").touch()  # macOS resource fork
    (folder / "notes.txt").touch()
    (folder / "c1_brainmask.nii.gz").touch()

    cases, problems = discover_cases(tmp_path)

    assert problems == []
    assert cases[0].images["t1"].name == "c1_t1.nii.gz"


def test_missing_root_raises_data_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    with pytest.raises(DataError, match="nowhere"):
        discover_cases(missing)


def test_root_without_cases_says_which_schemes_were_looked_for(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "readme.txt").touch()

    with pytest.raises(DataError) as info:
        discover_cases(tmp_path)

    message = str(info.value)
    assert "no BraTS case was found" in message
    assert str(tmp_path) in message
    assert "_t1ce" in message and "-t2f" in message


def test_root_with_only_broken_cases_reports_their_problems(tmp_path: Path) -> None:
    make_case(tmp_path / "half", "half", "2023", parts=("t1", "t1c"))

    with pytest.raises(DataError, match="missing modality"):
        discover_cases(tmp_path)


def test_invalid_on_problem_is_a_config_error(tmp_path: Path) -> None:
    make_case(tmp_path / "c", "c", "2021")

    with pytest.raises(ConfigError, match="on_problem"):
        discover_cases(tmp_path, on_problem="ignore")  # type: ignore[arg-type]


def test_read_case_folder_recognises_common_names_case_insensitively(tmp_path: Path) -> None:
    for name in ("T1.nii.gz", "T1_GD.nii.gz", "t2.nii", "FLAIR.nii.gz", "localizer.nii.gz"):
        (tmp_path / name).touch()

    case = read_case_folder(tmp_path, case_id="TCGA-XX-0001")

    assert case.case_id == "TCGA-XX-0001"
    assert {m: p.name for m, p in case.images.items()} == {
        "t1": "T1.nii.gz",
        "t1c": "T1_GD.nii.gz",
        "t2": "t2.nii",
        "flair": "FLAIR.nii.gz",
    }
    assert case.seg is None


def test_read_case_folder_takes_the_label_convention_from_brats_names(tmp_path: Path) -> None:
    make_case(tmp_path / "x", "x", "2021")

    case = read_case_folder(tmp_path / "x")

    assert case.naming == "2021"
    assert case.seg is not None and case.seg.name == "x_seg.nii.gz"


def test_read_case_folder_with_unnamed_label_convention_needs_naming(tmp_path: Path) -> None:
    for name in ("t1.nii.gz", "t1post.nii.gz", "t2.nii.gz", "t2_flair.nii.gz", "label.nii.gz"):
        (tmp_path / name).touch()

    with pytest.raises(ConfigError, match="naming"):
        read_case_folder(tmp_path)
    case = read_case_folder(tmp_path, naming="2023")

    assert case.enhancing_label == 3
    assert case.images["flair"].name == "t2_flair.nii.gz"


def test_read_case_folder_explicit_mapping_and_missing_modality(tmp_path: Path) -> None:
    for name in ("a.nii", "b.nii", "c.nii", "d.nii"):
        (tmp_path / name).touch()

    case = read_case_folder(tmp_path, {"t1": "a.nii", "t1c": "b.nii", "t2": "c.nii", "flair": "d.nii"})
    with pytest.raises(CaseError, match="'flair'"):
        read_case_folder(tmp_path, {"t1": "a.nii", "t1c": "b.nii", "t2": "c.nii"})
    with pytest.raises(ConfigError, match="pd"):
        read_case_folder(tmp_path, {"pd": "a.nii"})

    assert case.images["t1c"] == tmp_path / "b.nii"


def hand_made_label() -> np.ndarray:
    label = np.zeros((4, 5, 6), dtype=np.uint8)
    label[0, :, :] = 2  # 30 voxels of oedema
    label[1, :2, :] = 1  # 12 voxels of necrotic core
    label[2, 0, :4] = 9  # placeholder for the enhancing label: 4 voxels
    return label


@pytest.mark.parametrize("enhancing", [4, 3])
def test_labels_to_regions_counts(enhancing: int) -> None:
    label = hand_made_label()
    label[label == 9] = enhancing

    regions = labels_to_regions(label, enhancing)

    assert regions.shape == (3, 4, 5, 6)
    assert regions.dtype == np.bool_
    assert [int(regions[c].sum()) for c in range(3)] == [30 + 12 + 4, 12 + 4, 4]
    assert not regions[:, 3].any()  # background slab
    assert bool(np.all(regions[2] <= regions[1])) and bool(np.all(regions[1] <= regions[0]))


def test_labels_to_regions_rejects_the_other_schemes_enhancing_label() -> None:
    label = hand_made_label()
    label[label == 9] = 4

    with pytest.raises(DataError, match="4"):
        labels_to_regions(label, enhancing_label=3)


def test_labels_to_regions_names_unexpected_values() -> None:
    label = np.array([[[0, 1, 2, 4, 7, 7, 5]]])

    with pytest.raises(DataError, match="5, 7"):
        labels_to_regions(label, enhancing_label=4)


def test_real_brats_2023_case_is_discovered() -> None:
    root = real_data_dir() / "brain_mri"
    if not (root / "brats_format_case").is_dir():
        pytest.skip(f"real brain MRI data not found under {root}; set CONFIDE_DATA to the shared data folder")

    cases, problems = discover_cases(root)

    by_id: dict[str, BratsCase] = {c.case_id: c for c in cases}
    assert by_id["brats_format_case"].naming == "2023"
    assert by_id["brats_format_case"].images["t1"].name == "case-t1n.nii.gz"
    # The TCGA folder uses plain names, so discovery reports it instead of guessing.
    assert any("read_case_folder" in p.reason for p in problems if p.case_id == "TCGA-FG-6692")


def test_real_tcga_folder_is_read_with_common_names() -> None:
    folder = real_data_dir() / "brain_mri" / "TCGA-FG-6692"
    if not folder.is_dir():
        pytest.skip(f"real TCGA case not found at {folder}; set CONFIDE_DATA to the shared data folder")

    case = read_case_folder(folder)

    assert case.case_id == "TCGA-FG-6692"
    assert {m: p.name for m, p in case.images.items()} == {m: f"{m}.nii.gz" for m in MODALITIES}
