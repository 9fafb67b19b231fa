from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest
from safetensors.numpy import save_file

from confide.errors import CaseError, ConfigError, DataError
from confide.kinds.mil.slides import (
    SlideBag,
    common_dim,
    keep_dim,
    read_bag,
    read_site,
    split_by_patient,
    write_synthetic_slides,
)


def _labels(folder: Path, rows: list[tuple[str, object, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide", "label", "patient"])
        writer.writerows(rows)


def _features(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_a_safetensors_bag_round_trips(tmp_path: Path) -> None:
    features, coords = _features(7, 5, 0), np.arange(14, dtype=np.int64).reshape(7, 2)
    save_file({"features": features, "coords": coords}, str(tmp_path / "a.safetensors"))

    bag = read_bag(tmp_path / "a.safetensors", slide="a", label=1, patient="p")

    np.testing.assert_array_equal(bag.features, features)
    np.testing.assert_array_equal(bag.coords, coords)
    assert (len(bag), bag.dim, bag.label, bag.patient) == (7, 5, 1, "p")


def test_a_clam_style_h5_bag_round_trips_float16_and_a_batch_axis(tmp_path: Path) -> None:
    features = _features(6, 4, 1)
    with h5py.File(tmp_path / "b.h5", "w") as handle:
        handle.create_dataset("features", data=features[None].astype(np.float16))  # (1, tiles, dim)
        handle.create_dataset("coords", data=np.ones((6, 2), dtype=np.int32))

    bag = read_bag(tmp_path / "b.h5", slide="b", label=0, patient="b")

    assert bag.features.dtype == np.float32 and bag.features.shape == (6, 4)
    np.testing.assert_allclose(bag.features, features, atol=1e-2)
    assert bag.coords is not None and bag.coords.shape == (6, 2)


def _site_with_bad_files(folder: Path) -> None:
    feats = folder / "features"
    feats.mkdir(parents=True)
    rows: list[tuple[str, object, str]] = []
    for i in range(4):
        save_file({"features": _features(5, 8, i)}, str(feats / f"good{i}.safetensors"))
        rows.append((f"good{i}", i % 2, f"p{i}"))
    (feats / "corrupt.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    save_file({"features": np.full((3, 8), np.nan, dtype=np.float32)}, str(feats / "nan.safetensors"))
    save_file({"features": _features(4, 3, 9)}, str(feats / "otherdim.safetensors"))
    save_file({"features": np.zeros((0, 8), dtype=np.float32)}, str(feats / "empty.safetensors"))
    save_file({"features": np.zeros(8, dtype=np.float32)}, str(feats / "flat.safetensors"))
    with h5py.File(feats / "nofeat.h5", "w") as handle:
        handle.create_dataset("coords", data=np.zeros((2, 2)))
    rows += [(n, 1, n) for n in ("corrupt", "nan", "otherdim", "empty", "flat", "nofeat", "missing")]
    rows += [("good0", 0, "again"), ("badlabel", "tumour", "x")]
    _labels(folder, rows)


def test_bad_slides_are_skipped_and_named_with_the_reason(tmp_path: Path) -> None:
    _site_with_bad_files(tmp_path / "site")

    site = read_site(tmp_path / "site", classes=2)
    site = keep_dim(site, common_dim([site]))

    assert sorted(b.slide for b in site.bags) == ["good0", "good1", "good2", "good3"]
    reasons = {s.item: s.reason for s in site.skipped}
    assert set(reasons) == {"corrupt", "nan", "otherdim", "empty", "flat", "nofeat", "missing", "good0", "badlabel"}
    assert "corrupt.safetensors" in reasons["corrupt"]
    assert "NaN" in reasons["nan"]
    assert "dimension 3" in reasons["otherdim"] and "8" in reasons["otherdim"]
    assert "no tiles" in reasons["empty"]
    assert "(tiles, dim)" in reasons["flat"]
    assert "features" in reasons["nofeat"]
    assert "missing.safetensors" in reasons["missing"]
    assert "twice" in reasons["good0"]
    assert "tumour" in reasons["badlabel"]


def test_a_bad_slide_stops_the_job_when_asked(tmp_path: Path) -> None:
    folder = tmp_path / "site"
    (folder / "features").mkdir(parents=True)
    save_file({"features": _features(5, 8, 0)}, str(folder / "features" / "good.safetensors"))
    (folder / "features" / "corrupt.h5").write_bytes(b"not hdf5")
    _labels(folder, [("good", 0, "a"), ("corrupt", 1, "b")])

    with pytest.raises(CaseError) as raised:
        read_site(folder, on_bad_case="stop")

    assert raised.value.case_id == "corrupt" and "corrupt.h5" in raised.value.reason


def test_a_site_without_labels_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "labels.csv").write_text("name,class\na,1\n")

    with pytest.raises(DataError, match="slide,label"):
        read_site(tmp_path / "site")


def _bags(patients: int, slides_each: int) -> list[SlideBag]:
    return [
        SlideBag(f"p{p}-s{s}", f"p{p}", int(p % 3 == 0), _features(3, 2, p))
        for p in range(patients)
        for s in range(slides_each)
    ]


def test_the_split_keeps_each_patient_on_one_side_and_both_classes_on_both() -> None:
    bags = _bags(12, 2)

    train, test = split_by_patient(bags, 0.25, seed=3, site="s")
    again = split_by_patient(bags, 0.25, seed=3, site="s")

    train_patients = {b.patient for b in train.bags}
    test_patients = {b.patient for b in test.bags}
    assert not train_patients & test_patients
    assert len(train) + len(test) == 24
    assert set(train.labels()) == {0, 1} and set(test.labels()) == {0, 1}
    assert [b.slide for b in again[1].bags] == [b.slide for b in test.bags]
    other = [tuple(b.slide for b in split_by_patient(bags, 0.25, seed=s, site="s")[1].bags) for s in range(5)]
    assert len(set(other)) > 1  # the seed matters


def test_a_site_with_one_patient_cannot_be_split() -> None:
    with pytest.raises(DataError, match="at least 2"):
        split_by_patient(_bags(1, 3), 0.25, seed=0, site="s")


def test_generated_slides_hold_the_signal_only_in_positive_slides(tmp_path: Path) -> None:
    folders = write_synthetic_slides(tmp_path, 3, 10, 40, 12, seed=1, fmt="mixed")

    sites = [read_site(f) for f in folders]

    assert [s.name for s in sites] == ["site-1", "site-2", "site-3"]
    assert all(not s.skipped and len(s.bags) == 10 for s in sites)
    assert {p.suffix for p in (folders[0] / "features").iterdir()} == {".safetensors", ".h5"}
    for site in sites:
        for bag in site.bags:
            assert bag.tumour is not None and bag.coords is not None and 20 <= len(bag) <= 60
            share = bag.tumour.mean()
            assert (0.0 < share <= 0.2) if bag.label else share == 0.0
    rates = [np.mean([b.label for b in s.bags]) for s in sites]
    assert rates[0] < rates[-1]  # sites differ in their share of positive slides
    means = [np.concatenate([b.features for b in s.bags]).mean(axis=0) for s in sites]
    assert np.abs(means[0] - means[1]).max() > 0.3  # and in their feature offset (scanner, stain)
    assert (tmp_path / "synthetic.json").is_file()


def test_the_generator_refuses_nonsense(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dim"):
        write_synthetic_slides(tmp_path, 2, 10, 40, 0, seed=0)
