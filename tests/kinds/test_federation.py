from __future__ import annotations

from pathlib import Path

import pytest

from confide.errors import CaseError, DataError
from confide.kinds.brain_tumor.federation import load_site, site_folders, split_cases
from confide.kinds.brain_tumor.phantom_writer import write_federation
from confide.kinds.brain_tumor.preprocess import PreprocessConfig

PRE = PreprocessConfig(roi=(16, 16, 16))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fed")
    (folder,) = write_federation(root, sites=1, cases=4, seed=3)
    return folder


def test_split_is_deterministic_disjoint_and_keeps_both_sides() -> None:
    ids = [f"c{i}" for i in range(10)]

    train, test = split_cases(ids, 0.25, seed=1, site="a")

    assert (train, test) == split_cases(list(reversed(ids)), 0.25, seed=1, site="a")
    assert not train & test and len(train | test) == 10 and len(test) == 2  # round(0.25 * 10) = 2
    assert split_cases(["x", "y"], 0.9, seed=0, site="a")[0]  # never an empty training side
    with pytest.raises(DataError, match="at least 2"):
        split_cases(["only"], 0.5, seed=0, site="a")


def test_site_folders_name_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "site-a").mkdir()

    assert [p.name for p in site_folders(tmp_path)] == ["site-a"]
    with pytest.raises(DataError, match="site-b"):
        site_folders(tmp_path, ["site-a", "site-b"])
    with pytest.raises(DataError, match="does not exist"):
        site_folders(tmp_path / "nowhere")


def test_a_corrupt_case_is_skipped_and_listed(site: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / site.name
    shutil.copytree(site, copy)
    broken = sorted(copy.iterdir())[0]
    flair = next(broken.glob("*_flair.nii.gz"))
    flair.write_bytes(flair.read_bytes()[:200])

    loaded = load_site(copy, PRE, test_fraction=0.25, seed=0)

    assert len(loaded.train) + len(loaded.test) == 3
    assert [p.case_id for p in loaded.problems] == [broken.name]
    assert "flair" in loaded.problems[0].reason
    with pytest.raises(CaseError, match=broken.name):
        load_site(copy, PRE, test_fraction=0.25, seed=0, on_bad_case="stop")


def test_cases_prepare_into_the_roi(site: Path) -> None:
    loaded = load_site(site, PRE, test_fraction=0.25, seed=0)

    assert len(loaded.train) == 3 and len(loaded.test) == 1 and not loaded.problems
    assert loaded.train[0].image.shape == (4, 16, 16, 16)
