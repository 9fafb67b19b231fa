"""Reading an image site: labels.csv, its split and patients, the label vocabulary, the image formats, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from confide.api import Place, SiteData
from confide.errors import ConfigError, DataError
from confide.kinds.images.dataset import ImageSet
from confide.kinds.images.labels import discover_classes, read_labels, vocabulary
from confide.kinds.images.pixels import fit_square, load_image, read_pixels, to_channels
from confide.kinds.images.site import read_site
from confide.kinds.images.task import prepare
from tests.kinds.images_helpers import colour_image, config, dicom, grey_png, place, write_labels


def sets(data: SiteData) -> tuple[ImageSet, ImageSet | None]:
    """A site's splits as the image task reads them."""
    assert isinstance(data.train, ImageSet) and (data.test is None or isinstance(data.test, ImageSet))
    return data.train, data.test


def _site(folder: Path, n: int = 12, *, split: bool = False, patients: int | None = None) -> Path:
    """``n`` PNG images labelled a/b alternately, optionally with a split column and patients."""
    header = ["file", "label"] + (["split"] if split else []) + (["patient"] if patients else [])
    rows = []
    for i in range(n):
        grey_png(folder / f"img{i:02d}.png", value=(40 + 10 * i) % 256)
        row = [f"img{i:02d}.png", "ab"[i % 2]]
        if split:
            row.append("test" if i % 4 == 0 else "train")
        if patients:
            row.append(f"p{i % patients}")
        rows.append(row)
    write_labels(folder, rows, header)
    return folder


def test_a_split_column_is_used_as_given_and_val_set_aside(tmp_path: Path) -> None:
    folder = _site(tmp_path / "s", n=12, split=True)
    rows = (folder / "labels.csv").read_text().splitlines()
    rows[1] = rows[1].replace(",test", ",VAL")  # img00 becomes a validation image (any case)
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")

    data = read_site(config(), place(folder))

    train, test = sets(data)
    assert test is not None
    assert sorted(test.files) == ["img04.png", "img08.png"]
    assert len(train) == 9 and "img00.png" not in train.files + test.files
    assert any("as given" in note for note in data.notes)
    assert any("1 val images set aside" in note for note in data.notes)


def test_without_a_split_column_a_patients_images_stay_on_one_side(tmp_path: Path) -> None:
    folder = _site(tmp_path / "s", n=24, patients=6)

    train, test = sets(read_site(config(), place(folder, test_fraction=0.3)))

    assert test is not None and len(test) > 0
    patient = {f"img{i:02d}.png": f"p{i % 6}" for i in range(24)}
    train_patients = {patient[f] for f in train.files}
    test_patients = {patient[f] for f in test.files}
    assert not train_patients & test_patients
    assert len(train) + len(test) == 24
    _, again = sets(read_site(config(), place(folder, test_fraction=0.3)))
    assert again is not None and again.files == test.files  # the seeded split reproduces


def test_labels_are_matched_ignoring_case_and_mapped_to_the_jobs_order(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    for i in range(4):
        grey_png(folder / f"{i}.png")
    write_labels(folder, [["0.png", " B "], ["1.png", "a"], ["2.png", "A"], ["3.png", "b"]])

    train, test = sets(read_site(config(classes=["b", "a"]), place(folder, test_fraction=0.5)))

    parts = [train] if test is None else [train, test]
    labels = {f: int(y) for part in parts for f, y in zip(part.files, part.labels, strict=True)}
    assert labels == {"0.png": 0, "1.png": 1, "2.png": 1, "3.png": 0}


def test_a_label_outside_the_classes_is_refused_naming_file_line_and_value(tmp_path: Path) -> None:
    folder = _site(tmp_path / "s", n=4)
    write_labels(folder, [["img00.png", "a"], ["img01.png", "b"], ["img02.png", "grade-4"]])

    with pytest.raises(DataError, match=r"labels\.csv, line 4: label 'grade-4' of 'img02\.png' is not one of"):
        read_site(config(), place(folder))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["a.png", "a", "train"], ["b.png", "b", "later"]], r"line 3: split 'later' of 'b\.png' is not train"),
        (
            [["a.png", "a", "train"], ["a.png", "b", "test"]],
            r"line 3: file 'a\.png' is listed again \(first on line 2\)",
        ),
        ([["a.png", "", "train"]], r"line 2: file 'a\.png' has an empty label"),
        ([["", "a", "train"]], r"line 2: the file cell is empty"),
    ],
)
def test_a_bad_row_is_refused_by_line(tmp_path: Path, rows: list[list[str]], message: str) -> None:
    write_labels(tmp_path, rows, ("file", "label", "split"))

    with pytest.raises(DataError, match=message):
        read_labels(tmp_path)


def test_a_labels_file_without_a_label_column_names_what_it_has(tmp_path: Path) -> None:
    write_labels(tmp_path, [["a.png", "x"]], ("file", "grade"))

    with pytest.raises(DataError, match=r"no column label \(the header has \['file', 'grade'\]\)"):
        read_labels(tmp_path)


def test_the_vocabulary_is_read_from_every_site_in_numeric_or_alphabetical_order(tmp_path: Path) -> None:
    write_labels(tmp_path / "s1", [["a.png", "10"], ["b.png", "2"]])
    write_labels(tmp_path / "s2", [["a.png", "0"], ["b.png", "2"]])
    (tmp_path / "not-a-site").mkdir()

    found, files = discover_classes(tmp_path)

    assert found == ("0", "2", "10")  # numbers in numeric order, not as text
    assert len(files) == 2
    assert vocabulary(["Mild", "none", "mild", "Severe"]) == ("Mild", "none", "Severe")  # case folded, first kept


def test_prepare_completes_the_classes_and_says_how_to_fix_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _site(tmp_path / "s1", n=4)
    _site(tmp_path / "s2", n=4)

    completed = prepare(config(classes=None), tmp_path)
    data = read_site(completed, place(tmp_path / "s1", test_fraction=0.5))

    assert completed.classes == ("a", "b") and completed.classes_read_from_data
    assert "classes: [a, b]" in caplog.text
    assert any("classes read from the sites' labels.csv: ['a', 'b']" in note for note in data.notes)


def test_a_site_without_classes_in_the_job_is_told_they_are_needed(tmp_path: Path) -> None:
    folder = _site(tmp_path / "s", n=4)

    with pytest.raises(ConfigError, match=r"task\.classes is not set: site site-a"):
        read_site(config(classes=None), place(folder))


def test_colour_becomes_grey_by_luminance_and_grey_becomes_colour(tmp_path: Path) -> None:
    colour = colour_image(tmp_path / "c.png", (200, 40, 10))
    grey = grey_png(tmp_path / "g.png", 100)

    as_grey = load_image(colour, channels=1, side=8)
    as_colour = load_image(grey, channels=3, side=8)

    assert as_grey.shape == (1, 8, 8) and as_colour.shape == (3, 8, 8)
    assert as_grey[0, 4, 4] == pytest.approx((0.299 * 200 + 0.587 * 40 + 0.114 * 10) / 255, abs=1e-5)
    assert np.allclose(as_colour, 100 / 255, atol=1e-6)


def test_jpeg_png_and_dicom_are_read_in_their_own_scales(tmp_path: Path) -> None:
    ramp = (np.arange(16 * 16).reshape(16, 16) * 16).astype(np.uint16)  # 0 .. 4080 in 12 bits
    grey_dicom = dicom(tmp_path / "g.dcm", ramp)
    inverted = dicom(tmp_path / "m1.dcm", ramp, photometric="MONOCHROME1")
    windowed = dicom(tmp_path / "w.dcm", ramp, WindowCenter=2048, WindowWidth=1024)
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    colour_dicom = dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB")
    jpeg = colour_image(tmp_path / "c.jpg", (0, 0, 255))

    assert np.allclose(read_pixels(grey_dicom)[0], ramp / 4095, atol=1e-6)
    assert np.allclose(read_pixels(inverted)[0], 1 - ramp / 4095, atol=1e-6)
    window = read_pixels(windowed)[0]
    assert window.min() == 0 and window.max() == 1 and 0.4 < window[8, 0] < 0.6  # 2048 lies mid-window
    assert read_pixels(colour_dicom)[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    blue = read_pixels(jpeg)[:, 10, 10]
    assert blue[2] > 0.95 and blue[0] < 0.05  # JPEG is lossy, but blue stays blue


def test_a_sixteen_bit_png_is_scaled_by_its_detector_depth(tmp_path: Path) -> None:
    from PIL import Image

    values = np.full((8, 8), 1000, dtype=np.uint16)
    values[0, 0] = 3000  # fits 12 bits
    Image.fromarray(values).save(tmp_path / "d.png")

    pixels = read_pixels(tmp_path / "d.png")

    assert pixels[0, 0, 0] == pytest.approx(3000 / 4095) and pixels[0, 1, 1] == pytest.approx(1000 / 4095)


def test_any_size_is_padded_square_and_resized_without_distortion() -> None:
    wide = np.ones((1, 10, 20), dtype=np.float32)

    square = fit_square(wide, 10)

    assert square.shape == (1, 10, 10)
    assert square[0, 0].max() < 0.05 and square[0, -1].max() < 0.05  # black bars above and below
    assert square[0, 5].min() > 0.95  # the image's middle row is intact
    assert to_channels(np.ones((3, 4, 4), dtype=np.float32), 1).shape == (1, 4, 4)


def test_corrupt_missing_unlisted_and_escaping_files_are_skipped_with_their_reasons(tmp_path: Path) -> None:
    folder = _site(tmp_path / "s", n=8)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "notes.dcm").write_text("a text file")
    grey_png(folder / "stray.png")
    grey_png(tmp_path / "outside.png")
    with open(folder / "labels.csv", "a") as handle:
        handle.write("broken.png,a\nnotes.dcm,b\ngone.png,a\n../outside.png,b\n")

    data = read_site(config(), place(folder, test_fraction=0.5))

    reasons = dict(data.skipped)
    assert "not a readable image" in reasons["broken.png"]
    assert "not a readable DICOM file" in reasons["notes.dcm"]
    assert "listed in labels.csv but not found" in reasons["gone.png"]
    assert "leaves the site folder" in reasons["../outside.png"]
    assert reasons["stray.png"] == "an image file not listed in labels.csv"
    assert data.test is not None and len(data.train) + len(data.test) == 8  # every good image kept


def test_a_site_without_a_readable_image_names_the_folder_and_the_first_reasons(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "x.png").write_text("not an image")
    write_labels(folder, [["x.png", "a"], ["y.png", "b"]])

    with pytest.raises(DataError, match=r"site site-a: no readable image in .*s \(2 listed.*x\.png: not a readable"):
        read_site(config(), place(folder))


def test_on_bad_case_stop_names_the_file_and_max_cases_reads_the_first_images(tmp_path: Path) -> None:
    folder = _site(tmp_path / "s", n=8)
    strict = Place(folder, "site-a", 0, 0.5, on_bad_case="stop")
    first_six = Place(folder, "site-a", 0, 0.5, max_cases=6)

    train, test = sets(read_site(config(), first_six))
    with open(folder / "labels.csv", "a") as handle:
        handle.write("gone.png,a\n")

    assert test is not None and sorted(train.files + test.files) == [f"img{i:02d}.png" for i in range(6)]
    with pytest.raises(DataError, match=r"site site-a: .*gone\.png: line 10: listed in labels\.csv but not found"):
        read_site(config(), strict)
