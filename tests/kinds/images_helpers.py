"""Writing small image site folders for the image task's tests: PNG, JPEG and DICOM files and labels.csv."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from confide.api import Place
from confide.kinds.images.config import ImageTaskConfig

SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")


def write_labels(folder: Path, rows: Iterable[Sequence[str]], header: Sequence[str] = ("file", "label")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "labels.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def grey_png(path: Path, value: int = 128, shape: tuple[int, int] = (20, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)
    return path


def colour_image(path: Path, rgb: tuple[int, int, int] = (200, 40, 10), shape: tuple[int, int] = (20, 20)) -> Path:
    """A uniform colour image; PNG or JPEG by the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.empty((*shape, 3), dtype=np.uint8)
    pixels[...] = rgb
    Image.fromarray(pixels).save(path)
    return path


def dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12, **tags: Any) -> Path:
    """An uncompressed DICOM file: greyscale uint16 of ``bits`` stored bits, or (H, W, 3) uint8 RGB."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.PhotometricInterpretation = photometric
    if photometric == "RGB":
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = pixels.astype(np.uint8).tobytes()
    else:
        ds.SamplesPerPixel = 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    for name, value in tags.items():
        setattr(ds, name, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def place(folder: Path, site: str = "site-a", seed: int = 0, test_fraction: float = 0.25) -> Place:
    return Place(folder=folder, site=site, seed=seed, test_fraction=test_fraction)


def config(**changes: Any) -> ImageTaskConfig:
    """A small task config (two classes a, b; 16 px greyscale) with ``changes``."""
    fields: dict[str, Any] = {"classes": ["a", "b"], "image_size": 16, "width": 4, **changes}
    return ImageTaskConfig.model_validate(fields)
