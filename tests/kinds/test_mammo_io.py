from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from confide.errors import DataError
from confide.kinds.mammography.reading import read_dicom, read_folder, read_image, read_labelled_folder, resized, square

MAMMO_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
RAMP = (np.arange(32 * 32).reshape(32, 32) * 4).astype(np.uint16)  # 0 .. 4092, 12-bit


def _dicom(path: Path, pixels: np.ndarray = RAMP, photometric: str = "MONOCHROME2", **tags: Any) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MAMMO_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MAMMO_FOR_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_monochrome2_without_voi_is_scaled_by_the_stored_range(tmp_path: Path) -> None:
    image = read_dicom(_dicom(tmp_path / "a.dcm"))

    assert image.pixels.dtype == np.float32
    assert np.allclose(image.pixels, RAMP / 4095.0, atol=1e-6)
    assert image.spacing_mm is None and image.laterality is None


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    plain = read_dicom(_dicom(tmp_path / "m2.dcm"))

    inverted = read_dicom(_dicom(tmp_path / "m1.dcm", photometric="MONOCHROME1"))

    assert np.allclose(inverted.pixels, 1.0 - plain.pixels, atol=1e-6)
    assert inverted.pixels[0, 0] == pytest.approx(1.0)  # stored 0 is white in MONOCHROME1


def test_the_window_is_applied_and_fills_the_range(tmp_path: Path) -> None:
    image = read_dicom(_dicom(tmp_path / "w.dcm", WindowCenter=1000, WindowWidth=200))

    flat = image.pixels.reshape(-1)
    stored = RAMP.reshape(-1)
    assert np.all(flat[stored <= 896] == 0.0) and np.all(flat[stored >= 1100] == 1.0)
    inside = (stored > 900) & (stored < 1096)
    assert np.all((flat[inside] > 0) & (flat[inside] < 1))
    assert flat[stored == 1000][0] == pytest.approx(0.5, abs=0.01)
    assert np.all(np.diff(flat) >= 0)  # monotone in the stored value


def test_the_window_acts_on_rescaled_values_and_monochrome1_inverts_after_it(tmp_path: Path) -> None:
    # stored 1000 -> 2 * 1000 - 1000 = 1000 after the modality LUT: the window's centre
    path = _dicom(
        tmp_path / "r.dcm",
        photometric="MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=1000,
        WindowWidth=400,
    )

    image = read_dicom(path)

    flat = image.pixels.reshape(-1)
    stored = RAMP.reshape(-1)
    assert flat[stored == 1000][0] == pytest.approx(0.5, abs=0.01)
    assert np.all(flat[stored <= 896] == 1.0) and np.all(flat[stored >= 1100] == 0.0)


def test_a_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUT Descriptor: entries, first value mapped, bits
    lut = (np.sqrt(np.arange(4096) / 4095.0) * 1000).astype(np.uint16)
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    path = _dicom(tmp_path / "lut.dcm", VOILUTSequence=Sequence([item]))

    image = read_dicom(path)

    assert np.allclose(image.pixels, lut[RAMP] / 1000.0, atol=1e-6)


def test_pixel_spacing_and_laterality_are_kept(tmp_path: Path) -> None:
    with_spacing = read_dicom(_dicom(tmp_path / "s.dcm", PixelSpacing=[0.07, 0.085], ImageLaterality="L"))
    imager_only = read_dicom(_dicom(tmp_path / "i.dcm", ImagerPixelSpacing=[0.1, 0.1], Laterality="R"))

    assert with_spacing.spacing_mm == pytest.approx((0.07, 0.085))
    assert with_spacing.laterality == "L"
    assert imager_only.spacing_mm == pytest.approx((0.1, 0.1))
    assert imager_only.laterality == "R"


def test_a_folder_names_what_it_skips(tmp_path: Path) -> None:
    _dicom(tmp_path / "good.dcm")
    Image.fromarray((RAMP // 16).astype(np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.dcm").write_bytes(b"\x00" * 200 + b"garbage")
    (tmp_path / "labels.csv").write_text("file,label\n")

    images, skipped = read_folder(tmp_path, ignore={"labels.csv"})

    assert sorted(Path(i.source).name for i in images) == ["good.dcm", "good.png"]
    reasons = {Path(s.item).name: s.reason for s in skipped}
    assert set(reasons) == {"notes.txt", "broken.dcm"}
    assert "not an image" in reasons["notes.txt"]
    assert "DICOM" in reasons["broken.dcm"]


def test_a_dicom_without_pixels_is_refused_with_the_reason(tmp_path: Path) -> None:
    ds = dcmread(_dicom(tmp_path / "image.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm", enforce_file_format=True)

    with pytest.raises(DataError, match="without pixel data"):
        read_dicom(tmp_path / "nopixels.dcm")


@pytest.mark.parametrize(
    ("values", "full_scale"),
    [
        ((RAMP // 16).astype(np.uint8), 255.0),  # 8 bit
        (RAMP, 4095.0),  # 16-bit PNG holding 12-bit values
        (RAMP * 16, 65535.0),  # 16-bit PNG using all 16 bits
    ],
)
def test_png_8_and_16_bit(tmp_path: Path, values: np.ndarray, full_scale: float) -> None:
    path = tmp_path / "x.png"
    Image.fromarray(values).save(path)

    image = read_image(path)

    assert image.pixels.dtype == np.float32 and image.pixels.shape == (32, 32)
    assert np.allclose(image.pixels, values / full_scale, atol=1e-6)


def test_pgm_8_and_16_bit_use_their_maxval(tmp_path: Path) -> None:
    eight = tmp_path / "e.pgm"
    eight.write_bytes(b"P5\n32 32\n255\n" + (RAMP // 16).astype(np.uint8).tobytes())
    sixteen = tmp_path / "s.pgm"
    sixteen.write_bytes(b"P5\n32 32\n4095\n" + RAMP.astype(">u2").tobytes())

    a, b = read_image(eight), read_image(sixteen)

    assert a.pixels.max() == pytest.approx(255 / 255) and a.pixels.min() == 0.0
    assert b.pixels.max() == pytest.approx(4092 / 4095, abs=1e-4)  # maxval 4095 is full scale
    assert np.allclose(b.pixels, RAMP / 4095.0, atol=1e-4)


def test_square_pads_to_keep_the_aspect_and_resized_scales_the_spacing(tmp_path: Path) -> None:
    tall = np.ones((40, 20), dtype=np.float32)

    out = square(tall, 20)

    assert out.shape == (20, 20)
    assert out[:, 10].min() > 0.9  # the image stays in the middle column band
    assert out[:, 0].max() < 0.1 and out[:, -1].max() < 0.1  # padding on both sides
    image = read_dicom(_dicom(tmp_path / "s.dcm", PixelSpacing=[0.1, 0.1]))
    assert resized(image, 16).spacing_mm == pytest.approx((0.2, 0.2))


def test_a_labelled_folder_reads_its_csv(tmp_path: Path) -> None:
    _dicom(tmp_path / "a.dcm")
    _dicom(tmp_path / "b.dcm", photometric="MONOCHROME1")
    Image.fromarray((RAMP // 16).astype(np.uint8)).save(tmp_path / "unlisted.png")
    (tmp_path / "labels.csv").write_text("file,label,patient\na.dcm,f,p1\nb.dcm,D,p1\nmissing.dcm,G,p2\n")

    cases, skipped = read_labelled_folder(tmp_path, ("F", "G", "D"))

    assert [(c.item, c.label, c.patient) for c in cases] == [("a.dcm", 0, "p1"), ("b.dcm", 2, "p1")]
    assert {s.item: s.reason for s in skipped} == {
        "missing.dcm": "listed in labels.csv but not found",
        "unlisted.png": "not listed in labels.csv",
    }


def test_a_labelled_folder_without_csv_or_with_an_unknown_label_is_an_error(tmp_path: Path) -> None:
    _dicom(tmp_path / "a.dcm")
    with pytest.raises(DataError, match=r"labels\.csv not found"):
        read_labelled_folder(tmp_path, ("F", "G", "D"))

    (tmp_path / "labels.csv").write_text("file,label\na.dcm,B\n")

    with pytest.raises(DataError, match=r"row 2: label 'B' of 'a.dcm'"):
        read_labelled_folder(tmp_path, ("F", "G", "D"))


def test_stop_on_a_bad_image_raises_naming_it(tmp_path: Path) -> None:
    (tmp_path / "bad.dcm").write_bytes(b"nope")
    (tmp_path / "labels.csv").write_text("file,label\nbad.dcm,normal\n")

    with pytest.raises(DataError, match=r"bad\.dcm"):
        read_labelled_folder(tmp_path, ("normal", "abnormal"), on_bad_case="stop")
