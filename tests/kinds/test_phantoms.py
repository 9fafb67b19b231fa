"""Tests of the synthetic brain-tumour phantoms (confide.kinds.brain_tumor.phantoms)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from confide.errors import ConfigError
from confide.kinds.brain_tumor.phantom_writer import write_federation
from confide.kinds.brain_tumor.phantoms import (
    MODALITIES,
    PhantomCase,
    SiteProfile,
    default_site_profiles,
    generate_case,
)

CLEAN = SiteProfile(
    name="clean",
    modality_gain=(1.0, 1.0, 1.0, 1.0),
    bias_strength=0.0,
    noise_sigma=0.0,
    voxel_size=(2.0, 2.0, 2.0),
    radius_mm=(12.0, 15.0),
    high_grade_fraction=1.0,
    enhancement=0.8,
)


def _profile(**changes: Any) -> SiteProfile:
    return dataclasses.replace(CLEAN, **changes)


def _case(profile: SiteProfile, *seed: int) -> PhantomCase:
    return generate_case(profile, np.random.default_rng(np.random.SeedSequence(list(seed))))


@pytest.fixture(scope="module")
def clean_case() -> PhantomCase:
    return _case(CLEAN, 11)


def _load(path: Path) -> nib.Nifti1Image:
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)
    return image


def _normal_white_matter(case: PhantomCase) -> np.ndarray:
    """Voxels of normal tissue brighter than any grey matter on a clean T1 (gain 1): white matter."""
    return (case.label == 0) & (case.images["t1"] > 0.92)


def test_same_seed_gives_identical_volumes() -> None:
    profile = default_site_profiles(2)[1]

    first = _case(profile, 5, 1, 0)
    second = _case(profile, 5, 1, 0)

    for modality in MODALITIES:
        assert np.array_equal(first.images[modality], second.images[modality])
    assert np.array_equal(first.label, second.label)
    assert np.array_equal(first.affine, second.affine)
    assert first.info == second.info


def test_different_seed_gives_different_volumes() -> None:
    profile = default_site_profiles(1)[0]

    first = _case(profile, 5, 0, 0)
    second = _case(profile, 6, 0, 0)

    assert not np.array_equal(first.label, second.label)
    assert not np.array_equal(first.images["flair"], second.images["flair"])


def test_default_profiles_give_brats_labels_and_types() -> None:
    profiles = default_site_profiles(4)

    cases = [_case(profile, 2, index) for index, profile in enumerate(profiles)]

    for case in cases:
        assert set(np.unique(case.label).tolist()) <= {0, 1, 2, 4}
        assert case.label.dtype == np.uint8
        assert sorted(case.images) == sorted(MODALITIES)
        for image in case.images.values():
            assert image.dtype == np.float32
            assert image.shape == case.label.shape
            assert np.all(np.isfinite(image))
            assert image.min() >= 0
        assert np.count_nonzero(case.label) > 0
        # skull-stripped: the volume corners are background
        assert all(image[0, 0, 0] == 0 for image in case.images.values())


def test_low_grade_profile_never_enhances() -> None:
    profile = _profile(high_grade_fraction=0.0, radius_mm=(6.0, 20.0))

    cases = [_case(profile, 3, index) for index in range(3)]

    for case in cases:
        assert not np.any(case.label == 4)
        assert np.any(case.label == 1)
        assert np.any(case.label == 2)
        assert case.info["grade"] == "low"


def test_high_grade_profile_has_enhancing_rim_around_core() -> None:
    profile = _profile(high_grade_fraction=1.0, radius_mm=(8.0, 20.0))

    cases = [_case(profile, 4, index) for index in range(2)]

    for case in cases:
        enhancing, core = case.label == 4, case.label == 1
        assert enhancing.any() and core.any()
        touching_core = ndimage.binary_dilation(core, structure=np.ones((3, 3, 3)))
        components, count = ndimage.label(enhancing, structure=np.ones((3, 3, 3)))
        for component in range(1, count + 1):
            assert touching_core[components == component].any()
        # a rim: its centroid sits near the centroid of the necrotic core it surrounds
        distance_vox = np.linalg.norm(
            np.asarray(ndimage.center_of_mass(enhancing)) - np.asarray(ndimage.center_of_mass(core))
        )
        assert distance_vox * 2.0 < 0.5 * case.info["radius_mm"]
        # and it is a shell: more enhancing voxels on the boundary of the core than inside it
        assert np.count_nonzero(enhancing) > 0.2 * np.count_nonzero(core)


def test_modality_contrast_follows_mri(clean_case: PhantomCase) -> None:
    images, label = clean_case.images, clean_case.label
    white = _normal_white_matter(clean_case)
    deep = ndimage.binary_erosion(images["t1"] > 0, iterations=3)  # away from the brain surface
    csf = (label == 0) & deep & (images["t1"] < 0.3)  # ventricles

    assert white.sum() > 1000 and csf.sum() > 100
    assert images["flair"][label == 2].mean() > 1.5 * images["flair"][white].mean()
    assert images["t1c"][label == 4].mean() > 1.2 * images["t1c"][white].mean()
    assert images["t1c"][label == 4].mean() > 1.5 * images["t1"][label == 4].mean()
    assert images["t2"][csf].mean() > 2.0 * images["t2"][white].mean()
    assert images["t1"][label == 2].mean() < images["t1"][white].mean()
    assert images["flair"][csf].mean() < images["flair"][white].mean()


def test_weaker_enhancement_gives_darker_rim() -> None:
    strong = _case(_profile(enhancement=1.0), 12)
    weak = _case(_profile(enhancement=0.2), 12)

    assert np.array_equal(strong.label, weak.label)
    assert weak.images["t1c"][weak.label == 4].mean() < 0.8 * strong.images["t1c"][strong.label == 4].mean()


def test_more_noise_gives_larger_spread_in_white_matter() -> None:
    reference = _case(CLEAN, 13)
    white = ndimage.binary_erosion(_normal_white_matter(reference))

    quiet = _case(_profile(noise_sigma=0.02), 13)
    noisy = _case(_profile(noise_sigma=0.10), 13)

    assert white.sum() > 500
    assert np.array_equal(quiet.label, noisy.label)
    assert noisy.images["t1"][white].std() > 2.5 * quiet.images["t1"][white].std()
    assert noisy.images["t1"][white].std() > 0.07


def test_gain_scales_intensities() -> None:
    base = _case(CLEAN, 14)

    scaled = _case(_profile(modality_gain=(1000.0, 1000.0, 500.0, 2000.0)), 14)

    assert np.allclose(scaled.images["t1"], 1000.0 * base.images["t1"], rtol=1e-4, atol=1e-2)
    assert np.allclose(scaled.images["flair"], 2000.0 * base.images["flair"], rtol=1e-4, atol=1e-2)


def test_thick_slices_halve_the_slices_and_keep_world_positions() -> None:
    thin = _case(_profile(voxel_size=(2.0, 2.0, 2.0)), 15)

    thick = _case(_profile(voxel_size=(2.0, 2.0, 4.0)), 15)

    assert thick.label.shape[:2] == thin.label.shape[:2]
    assert thick.label.shape[2] == thin.label.shape[2] // 2
    assert np.allclose(np.sqrt((thick.affine[:3, :3] ** 2).sum(axis=0)), (2.0, 2.0, 4.0))
    # a thick slice k covers thin slices 2k and 2k+1: same centre in world space, averaged signal
    centre_thick = thick.affine @ np.array([10, 20, 7, 1.0])
    centre_thin = (thin.affine @ np.array([10, 20, 14, 1.0]) + thin.affine @ np.array([10, 20, 15, 1.0])) / 2
    assert np.allclose(centre_thick, centre_thin)
    n = thick.label.shape[2]
    averaged = (thin.images["t2"][:, :, 0 : 2 * n : 2] + thin.images["t2"][:, :, 1 : 2 * n : 2]) / 2
    assert np.allclose(thick.images["t2"], averaged, atol=1e-4)


def test_write_federation_writes_brats_layout(tmp_path: Path) -> None:
    profiles = [
        _profile(name="site-1"),
        _profile(name="site-2", voxel_size=(2.0, 2.0, 4.0), noise_sigma=0.05),
    ]
    calls: list[tuple[str, str]] = []

    site_dirs = write_federation(
        tmp_path, sites=2, cases=1, seed=7, profiles=profiles, on_case=lambda s, c: calls.append((s, c))
    )

    assert site_dirs == [tmp_path / "site-1", tmp_path / "site-2"]
    assert calls == [("site-1", "BraTS2021_s1_00001"), ("site-2", "BraTS2021_s2_00001")]
    case_dir = tmp_path / "site-2" / "BraTS2021_s2_00001"
    assert sorted(p.name for p in case_dir.iterdir()) == sorted(
        f"BraTS2021_s2_00001_{suffix}.nii.gz" for suffix in ("t1", "t1ce", "t2", "flair", "seg")
    )
    seg = _load(case_dir / "BraTS2021_s2_00001_seg.nii.gz")
    flair = _load(case_dir / "BraTS2021_s2_00001_flair.nii.gz")
    assert seg.get_data_dtype() == np.uint8
    assert flair.get_data_dtype() == np.float32
    assert seg.shape == flair.shape
    assert np.allclose(seg.header.get_zooms(), (2.0, 2.0, 4.0))
    thin = _load(tmp_path / "site-1" / "BraTS2021_s1_00001" / "BraTS2021_s1_00001_t1.nii.gz")
    assert np.allclose(thin.header.get_zooms(), (2.0, 2.0, 2.0))
    assert thin.shape[2] > flair.shape[2]
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}
    record = json.loads((tmp_path / "phantoms.json").read_text())
    assert (record["seed"], record["sites"], record["cases"]) == (7, 2, 1)
    assert [s["profile"]["voxel_size"] for s in record["site_profiles"]] == [[2.0, 2.0, 2.0], [2.0, 2.0, 4.0]]


def test_write_federation_is_byte_identical_for_a_seed(tmp_path: Path) -> None:
    profiles = [_profile(name="site-1", radius_mm=(6.0, 8.0), noise_sigma=0.05)]

    write_federation(tmp_path / "a", sites=1, cases=1, seed=3, profiles=profiles)
    write_federation(tmp_path / "b", sites=1, cases=1, seed=3, profiles=profiles)

    name = "site-1/BraTS2021_s1_00001/BraTS2021_s1_00001_t1ce.nii.gz"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"sites": 0, "cases": 1}, "sites"),
        ({"sites": 1, "cases": 0}, "cases"),
        ({"sites": 1, "cases": 1, "seed": -1}, "seed"),
        ({"sites": 2, "cases": 1, "profiles": [CLEAN]}, "profiles"),
        ({"sites": 2, "cases": 1, "profiles": [CLEAN, CLEAN]}, "unique"),
    ],
)
def test_write_federation_rejects_bad_settings(tmp_path: Path, kwargs: dict[str, object], needle: str) -> None:
    arguments: dict[str, Any] = {"seed": 0, **kwargs}

    with pytest.raises(ConfigError, match=needle):
        write_federation(tmp_path, **arguments)

    assert not (tmp_path / "phantoms.json").exists()


def test_invalid_profile_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="radius_mm"):
        _profile(radius_mm=(20.0, 10.0))
    with pytest.raises(ConfigError, match="noise_sigma"):
        _profile(noise_sigma=-0.1)


def test_default_profiles_are_deterministic_and_different() -> None:
    profiles = default_site_profiles(9)

    assert profiles == default_site_profiles(9)
    assert [p.name for p in profiles] == [f"site-{i}" for i in range(1, 10)]
    assert len(set(profiles)) == 9
    assert profiles[0].radius_mm[0] > profiles[1].radius_mm[1]
    assert profiles[0].high_grade_fraction > profiles[1].high_grade_fraction
    assert profiles[1].voxel_size != profiles[0].voxel_size
    assert profiles[2].enhancement < profiles[0].enhancement
    assert profiles[3].noise_sigma > profiles[0].noise_sigma
    with pytest.raises(ConfigError, match="sites"):
        default_site_profiles(0)
