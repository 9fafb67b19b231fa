"""Reading mammograms with the image task: DICOM's display transforms (rescale, window, VOI LUT, MONOCHROME1), PNG
and PGM of 8 and 16 bits, and a labelled mammography folder with the files it skips."""

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

from confide.api import Place
from confide.errors import DataError
from confide.kinds.images.dataset import ImageSet
from confide.kinds.images.pixels import read_pixels
from confide.kinds.images.site import read_site
from tests.kinds.images_helpers import config, place

MAMMO_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
RAMP = (np.arange(32 * 32).reshape(32, 32) * 4).astype(np.uint16)  # 0 .. 4092, 12-bit
DENSITY = ["F", "G", "D"]


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


def _grey(path: Path) -> np.ndarray:
    values = read_pixels(path)
    assert values.dtype == np.float32 and values.shape[0] == 1
    return values[0]


def test_monochrome2_without_voi_is_scaled_by_the_stored_range(tmp_path: Path) -> None:
    pixels = _grey(_dicom(tmp_path / "a.dcm"))

    assert np.allclose(pixels, RAMP / 4095.0, atol=1e-6)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    plain = _grey(_dicom(tmp_path / "m2.dcm"))

    inverted = _grey(_dicom(tmp_path / "m1.dcm", photometric="MONOCHROME1"))

    assert np.allclose(inverted, 1.0 - plain, atol=1e-6)
    assert inverted[0, 0] == pytest.approx(1.0)  # stored 0 is white in MONOCHROME1


def test_the_window_is_applied_and_fills_the_range(tmp_path: Path) -> None:
    pixels = _grey(_dicom(tmp_path / "w.dcm", WindowCenter=1000, WindowWidth=200))

    flat = pixels.reshape(-1)
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

    flat = _grey(path).reshape(-1)

    stored = RAMP.reshape(-1)
    assert flat[stored == 1000][0] == pytest.approx(0.5, abs=0.01)
    assert np.all(flat[stored <= 896] == 1.0) and np.all(flat[stored >= 1100] == 0.0)


def test_a_voi_lut_sequence_is_applied_and_scaled_by_its_own_range(tmp_path: Path) -> None:
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUT Descriptor: entries, first value mapped, bits
    lut = (np.sqrt(np.arange(4096) / 4095.0) * 1000).astype(np.uint16)  # uses 1000 of the 16 bits' 65535
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    path = _dicom(tmp_path / "lut.dcm", VOILUTSequence=Sequence([item]))

    pixels = _grey(path)

    assert np.allclose(pixels, lut[RAMP] / 1000.0, atol=1e-6)


def test_a_dicom_without_pixels_is_refused_with_the_reason(tmp_path: Path) -> None:
    ds = dcmread(_dicom(tmp_path / "image.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm", enforce_file_format=True)

    with pytest.raises(DataError, match="without pixel data"):
        read_pixels(tmp_path / "nopixels.dcm")


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

    pixels = _grey(path)

    assert pixels.shape == (32, 32)
    assert np.allclose(pixels, values / full_scale, atol=1e-6)


def test_pgm_8_and_16_bit_use_their_maxval(tmp_path: Path) -> None:
    eight = tmp_path / "e.pgm"
    eight.write_bytes(b"P5\n32 32\n255\n" + (RAMP // 16).astype(np.uint8).tobytes())
    sixteen = tmp_path / "s.pgm"
    sixteen.write_bytes(b"P5\n32 32\n4095\n" + RAMP.astype(">u2").tobytes())

    a, b = _grey(eight), _grey(sixteen)

    assert a.max() == pytest.approx(255 / 255) and a.min() == 0.0
    assert b.max() == pytest.approx(4092 / 4095, abs=1e-4)  # maxval 4095 is full scale
    assert np.allclose(b, RAMP / 4095.0, atol=1e-4)


def test_a_labelled_folder_reads_its_csv_and_names_what_it_skips(tmp_path: Path) -> None:
    _dicom(tmp_path / "a.dcm")
    _dicom(tmp_path / "b.dcm", photometric="MONOCHROME1")
    Image.fromarray((RAMP // 16).astype(np.uint8)).save(tmp_path / "unlisted.png")
    (tmp_path / "broken.dcm").write_bytes(b"\x00" * 200 + b"garbage")
    (tmp_path / "labels.csv").write_text(
        "file,label,patient\na.dcm,f,p1\nb.dcm,D,p1\nmissing.dcm,G,p2\nbroken.dcm,G,p3\nc.dcm,g,p4\n"
    )
    _dicom(tmp_path / "c.dcm")

    data = read_site(config(classes=DENSITY, image_size=32), place(tmp_path, test_fraction=0.5))

    assert isinstance(data.train, ImageSet) and isinstance(data.test, ImageSet)
    labelled = {f: int(y) for part in (data.train, data.test) for f, y in zip(part.files, part.labels, strict=True)}
    assert labelled == {"a.dcm": 0, "b.dcm": 2, "c.dcm": 1}
    reasons = dict(data.skipped)
    assert set(reasons) == {"missing.dcm", "broken.dcm", "unlisted.png"}
    assert "listed in labels.csv but not found" in reasons["missing.dcm"]
    assert "DICOM" in reasons["broken.dcm"]
    assert reasons["unlisted.png"] == "an image file not listed in labels.csv"
    by_side = [set(part.files) for part in (data.train, data.test)]
    assert {"a.dcm", "b.dcm"} <= by_side[0] or {"a.dcm", "b.dcm"} <= by_side[1]  # patient p1 on one side


def test_a_labelled_folder_without_csv_or_with_an_unknown_label_is_an_error(tmp_path: Path) -> None:
    _dicom(tmp_path / "a.dcm")
    with pytest.raises(DataError, match=r"no labels\.csv"):
        read_site(config(classes=DENSITY), place(tmp_path))

    (tmp_path / "labels.csv").write_text("file,label\na.dcm,B\n")

    with pytest.raises(DataError, match=r"line 2: label 'B' of 'a\.dcm' is not one of"):
        read_site(config(classes=DENSITY), place(tmp_path))


def test_stop_on_a_bad_image_raises_naming_it(tmp_path: Path) -> None:
    (tmp_path / "bad.dcm").write_bytes(b"nope")
    (tmp_path / "labels.csv").write_text("file,label\nbad.dcm,normal\n")

    with pytest.raises(DataError, match=r"bad\.dcm"):
        read_site(config(classes=["normal", "abnormal"]), Place(tmp_path, "s", 0, 0.25, on_bad_case="stop"))
