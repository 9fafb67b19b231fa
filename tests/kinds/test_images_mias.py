"""The MIAS source of the image task: Info.txt, patients dealt to simulated sites, their acquisitions, and a deployed
site re-deriving the simulation's partition."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from confide.audit.threads import one_thread
from confide.config import DataConfig
from confide.errors import ConfigError, DataError
from confide.kinds.images.mias import (
    MiasSite,
    assign_sites,
    labelling,
    mias_sites,
    parse_info,
    stratified_patient_split,
)
from confide.kinds.images.mias_shift import SiteShift, site_shift
from confide.kinds.images.presets import MammoDensityPreset
from confide.kinds.images.task import prepare
from confide.workloads.kind import KindWorkload
from confide.workloads.registry import make_workload

DENSITY = ("F", "G", "D")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def mias(shared_data: Path) -> Path:
    root = shared_data / "mias"
    if not (root / "Info.txt").is_file():
        pytest.skip(f"mini-MIAS not found at {root} (Info.txt and images/mdbNNN.png)")
    return root


@pytest.fixture(scope="module")
def sites(mias: Path) -> list[MiasSite]:
    return mias_sites(mias, classes=DENSITY, n_sites=3, seed=7, test_fraction=0.25)


def test_info_txt_is_parsed_with_its_repeated_and_short_lines(mias: Path) -> None:
    records = parse_info(mias / "Info.txt")

    assert len(records) == 322
    assert Counter(r.tissue for r in records.values()) == {"F": 106, "G": 104, "D": 112}
    assert sum(r.abnormal for r in records.values()) == 115
    assert records["mdb226"].classes == ("CALC",) and records["mdb226"].severities == ("B", "B", "B")
    assert records["mdb059"].classes == ("CIRC",)  # no coordinates on its line
    assert records["mdb216"].severities == ("M",)  # '*NOTE 3*' instead of coordinates
    assert not records["mdb003"].abnormal and records["mdb001"].patient == records["mdb002"].patient


def test_all_322_films_are_read_and_each_patient_stays_on_one_site_and_side(sites: list[MiasSite]) -> None:
    where: dict[str, set[tuple[str, str]]] = {}
    for site in sites:
        for side, films in (("train", site.train), ("test", site.test)):
            for film in films:
                where.setdefault(film.patient, set()).add((site.name, side))

    assert sum(len(s.train) + len(s.test) for s in sites) == 322
    assert not any(s.skipped for s in sites)
    assert len(where) == 161
    assert all(len(places) == 1 for places in where.values())


def test_sites_get_every_density_class_on_both_sides(sites: list[MiasSite]) -> None:
    for site in sites:
        train = Counter(f.label for f in site.train)
        test = Counter(f.label for f in site.test)

        assert set(train) == set(test) == {0, 1, 2}
        assert min(train.values()) >= 20 and min(test.values()) >= 5
        assert 0.18 < len(site.test) / (len(site.train) + len(site.test)) < 0.32


def test_the_shift_differs_per_site_and_is_deterministic(mias: Path, sites: list[MiasSite]) -> None:
    again = mias_sites(mias, classes=DENSITY, n_sites=3, seed=7, only=["mias-3"])[0]
    plain = mias_sites(mias, classes=DENSITY, n_sites=3, seed=7, shift=False)

    assert [s.shift for s in sites] == [site_shift(0), site_shift(1), site_shift(2)]
    assert len({s.shift for s in sites}) == 3
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(again.train, sites[2].train, strict=True))
    shapes = [sites[i].train[0].pixels.shape for i in range(3)]
    assert shapes[1] != shapes[0]  # site 2 has a coarser matrix
    assert sites[1].train[0].spacing_mm == pytest.approx((256 / 192 * 0.8,) * 2)
    means = [np.mean([f.pixels.mean() for f in s.train]) for s in plain]
    shifted = [np.mean([f.pixels.mean() for f in s.train]) for s in sites]
    assert shifted[0] == pytest.approx(means[0])  # site 1 is the reference
    assert shifted[1] > means[1] + 0.05  # bright and soft
    assert shifted[2] < means[2] - 0.01  # hard contrast darkens the fat


def test_the_partition_depends_on_the_seed(mias: Path) -> None:
    records = parse_info(mias / "Info.txt")

    a, b, c = assign_sites(records, 3, 0), assign_sites(records, 3, 0), assign_sites(records, 3, 1)

    assert a == b and a != c
    assert sorted(Counter(a.values()).values()) == [53, 54, 54]


def test_a_deployed_site_re_derives_the_simulation_split(mias: Path) -> None:
    workload = make_workload(MammoDensityPreset(image_size=32))
    assert isinstance(workload, KindWorkload)
    simulated = workload.load_sites(DataConfig(root=mias), 3, lambda _: None)

    deployed = workload.load_site(DataConfig(root=mias), 3, mias, "mias-2")

    assert [s.name for s in simulated] == ["mias-1", "mias-2", "mias-3"]
    assert deployed.train.files == simulated[1].train.files and deployed.test.files == simulated[1].test.files
    assert np.array_equal(deployed.train.images, simulated[1].train.images)
    assert np.array_equal(deployed.train.weights, simulated[1].train.weights)
    assert deployed.train.images.shape[1:] == (1, 32, 32)
    assert any("gamma 0.70" in note for note in deployed.notes)
    assert any(note.startswith("test: ") and "F " in note for note in deployed.notes)
    with pytest.raises(DataError, match="mias-9"):
        workload.load_site(DataConfig(root=mias), 3, mias, "mias-9")


def test_the_mias_folder_needs_classes_it_labels(mias: Path) -> None:
    workload = make_workload(MammoDensityPreset(image_size=32, target="birads"))

    with pytest.raises(DataError, match=r"MIAS labels its films by background tissue .*\['A', 'B', 'C', 'D'\]"):
        workload.load_sites(DataConfig(root=mias), 0, lambda _: None)
    with pytest.raises(ConfigError, match=r"MIAS folder: give task\.classes"):
        prepare(MammoDensityPreset().image_task().model_copy(update={"classes": None}), mias)


def test_info_txt_lines_are_checked(tmp_path: Path) -> None:
    info = tmp_path / "Info.txt"
    info.write_text("prose\nmdb001 G CIRC B 535 425 197\nmdb001 G MISC M\nmdb002 G NORM\nmdb003 X NORM\n")

    with pytest.raises(DataError, match="line 5"):
        parse_info(info)

    info.write_text("prose\nmdb001 G CIRC B 535 425 197\nmdb001 G MISC M\nmdb002 G NORM \n")
    records = parse_info(info)
    assert records["mdb001"].classes == ("CIRC", "MISC") and records["mdb001"].severities == ("B", "M")
    assert records["mdb002"].laterality == "L" and records["mdb001"].laterality == "R"
    by_tissue, by_finding = labelling(("d", "G", "F")), labelling(("abnormal", "Normal"))
    assert (by_tissue(records["mdb001"]), by_finding(records["mdb001"]), by_finding(records["mdb002"])) == (1, 0, 1)


def test_the_patient_split_is_stratified_and_seeded() -> None:
    strata = {f"p{i}": ("a",) if i < 40 else ("b",) for i in range(60)}

    train, test = stratified_patient_split(strata, 0.25, 0, "site")
    again = stratified_patient_split(strata, 0.25, 0, "site")

    assert (train, test) == again
    assert len(test) == 15 and not train & test
    assert sum(strata[p] == ("a",) for p in test) == 10


def test_site_shift_keeps_values_in_range() -> None:
    pixels = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    shift = SiteShift(gamma=1.4, contrast=1.2, brightness=-0.05, blur_sigma=1.0, noise_std=0.05, scale=0.5)

    out, spacing = shift.apply(pixels, (0.8, 0.8), np.random.default_rng(0))

    assert out.shape == (32, 32) and spacing == pytest.approx((1.6, 1.6))
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_a_cap_on_images_keeps_whole_patients(mias: Path) -> None:
    (site,) = mias_sites(mias, classes=("normal", "abnormal"), n_sites=3, seed=7, only=["mias-1"], max_images=21)

    films = [*site.train, *site.test]
    per_patient = Counter(f.patient for f in films)

    assert 18 <= len(films) <= 21
    assert set(per_patient.values()) == {2}
    assert {f.label for f in films} <= {0, 1}
