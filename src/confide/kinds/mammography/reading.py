"""Reading mammograms: DICOM (through pydicom), PNG and PGM (through Pillow), one file or a site's folder.

Every reader returns a :class:`MammoImage` whose pixels are float32 in [0, 1], bright meaning dense (attenuating)
tissue, as radiologists read them:

- DICOM: the stored values go through the modality LUT (rescale), then the VOI LUT or the window (Window Center /
  Width) when the file has one, and are scaled by that transform's full output range; without a VOI the stored
  range (Bits Stored) is the full range. MONOCHROME1 images are inverted after that. Pixel spacing is Pixel Spacing,
  else Imager Pixel Spacing, else None; laterality is Image Laterality, else Laterality, else None.
- PNG / PGM: 8-bit images are divided by 255. Pillow already rescales a PGM's maxval to 8 or 16 bits, so a 16-bit
  PGM is divided by 65535. A 16-bit PNG has no maxval: it is divided by the full range of the smallest detector depth
  (10, 12, 14 or 16 bits) that holds its largest value, since such PNGs often carry 12- or 14-bit detector values.

A labelled site folder holds ``labels.csv`` (columns ``file,label`` and optionally ``patient``) and the images beside
it. Unreadable images, and images the CSV does not list, are returned as :class:`Skipped` with the reason.
"""

from __future__ import annotations

import csv
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from confide.errors import DataError
from confide.records import Skipped

DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ""})
RASTER_SUFFIXES = frozenset({".png", ".pgm", ".pnm"})
LABELS_FILE = "labels.csv"


@dataclass(frozen=True, eq=False)
class MammoImage:
    """One mammogram: pixels (H, W) float32 in [0, 1], pixel spacing (row, column) in mm when known."""

    pixels: np.ndarray
    spacing_mm: tuple[float, float] | None
    source: str
    laterality: Literal["L", "R"] | None = None

    def __post_init__(self) -> None:
        if self.pixels.ndim != 2 or self.pixels.dtype != np.float32:
            raise DataError(f"{self.source}: expected a 2D float32 image, got {self.pixels.dtype} {self.pixels.shape}")


@dataclass(frozen=True)
class MammoCase:
    """A labelled image: ``label`` indexes the target's classes; ``patient`` keeps a patient's images together."""

    image: MammoImage
    label: int
    patient: str
    item: str


def _laterality(value: Any) -> Literal["L", "R"] | None:
    text = str(value or "").strip().upper()
    if text == "L":
        return "L"
    if text == "R":
        return "R"
    return None


def _dicom_ranges(ds: Any) -> tuple[float, float]:
    """The output range of the file's display transform (modality LUT, then VOI LUT or window)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    bits = int(ds.BitsStored)
    if int(getattr(ds, "PixelRepresentation", 0)) == 0:
        stored = np.array([0, 2**bits - 1], dtype=np.int64)
    else:
        stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.int64)
    voi = ds.get("VOILUTSequence")
    if voi and voi[0].get("LUTDescriptor") is not None and voi[0].get("LUTData") is not None:
        n_entries = int(voi[0].LUTDescriptor[0]) or 2**16
        first = int(voi[0].LUTDescriptor[1])
        probe = apply_voi_lut(np.arange(first, first + n_entries, dtype=np.int64), ds)
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        probe = apply_voi_lut(np.array([-1e30, 1e30]), ds)
    else:
        probe = apply_modality_lut(stored, ds)
    probe = np.asarray(probe, dtype=np.float64)
    return float(probe.min()), float(probe.max())


def read_dicom(path: Path) -> MammoImage:
    """One single-frame greyscale DICOM image, displayed as its VOI LUT or window says (see the module docstring)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable DICOM file ({exc})") from None
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM file without pixel data (SOP class {ds.get('SOPClassUID', 'unknown')})")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DataError(f"{path}: expected a greyscale mammogram, got photometric interpretation {photometric!r}")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise DataError(f"{path}: multi-frame DICOM (tomosynthesis?) is not supported, expected one 2D image")
    try:
        stored = ds.pixel_array
        values = apply_voi_lut(apply_modality_lut(stored, ds), ds)
        low, high = _dicom_ranges(ds)
    except Exception as exc:  # pydicom raises many types for broken or unsupported pixel data
        raise DataError(f"{path}: pixel data cannot be decoded ({type(exc).__name__}: {exc})") from None
    if np.ndim(values) != 2:
        raise DataError(f"{path}: expected a 2D image, got pixel data of shape {np.shape(values)}")
    span = high - low
    pixels = (np.asarray(values, dtype=np.float64) - low) / span if span > 0 else np.zeros(np.shape(values))
    pixels = np.clip(pixels, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    spacing_mm = (float(spacing[0]), float(spacing[1])) if spacing is not None and len(spacing) == 2 else None
    side = ds.get("ImageLaterality") or ds.get("Laterality")
    return MammoImage(pixels.astype(np.float32), spacing_mm, str(path), _laterality(side))


def _raster_scale(image: Image.Image, values: np.ndarray, path: Path) -> float:
    if image.mode in ("L", "P"):
        return 255.0
    if image.mode == "1":
        return 1.0
    if image.format == "PPM":  # Pillow has rescaled maxval to 16 bits
        return 65535.0
    top = int(values.max()) if values.size else 0
    if top > 65535:
        raise DataError(f"{path}: values up to {top} do not fit a 16-bit mammogram")
    bits = next(b for b in (8, 10, 12, 14, 16) if top <= 2**b - 1)
    return float(2**bits - 1)


def read_raster(path: Path) -> MammoImage:
    """A greyscale PNG or PGM, 8 or 16 bits (see the module docstring for the scaling)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGB", "RGBA", "LA"):
                channels = np.asarray(image)
                grey = channels[..., 0]
                if image.mode != "LA" and not (
                    np.array_equal(grey, channels[..., 1]) and np.array_equal(grey, channels[..., 2])
                ):
                    raise DataError(f"{path}: a colour image, expected a greyscale mammogram")
                values = grey.astype(np.float64)
                scale = 255.0
            elif image.mode in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L"):
                values = np.asarray(image).astype(np.float64)
                scale = _raster_scale(image, values, path)
            else:
                raise DataError(f"{path}: image mode {image.mode} is not a greyscale mammogram")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    if values.ndim != 2:
        raise DataError(f"{path}: expected a 2D image, got shape {values.shape}")
    return MammoImage(np.clip(values / scale, 0.0, 1.0).astype(np.float32), None, str(path))


def read_image(path: Path) -> MammoImage:
    """One image by its suffix: .png/.pgm/.pnm through Pillow, .dcm/.dicom or no suffix through pydicom."""
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return read_raster(path)
    if suffix in DICOM_SUFFIXES:
        return read_dicom(path)
    raise DataError(f"{path}: not an image file (suffix {suffix!r}; expected DICOM, PNG or PGM)")


def read_folder(folder: Path, *, ignore: Collection[str] = ()) -> tuple[list[MammoImage], list[Skipped]]:
    """Every image in ``folder`` (not its sub-folders), in name order, and every entry that is not one, with why.
    Hidden entries and the names in ``ignore`` are passed over."""
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    images: list[MammoImage] = []
    skipped: list[Skipped] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name in ignore:
            continue
        if not entry.is_file():
            skipped.append(Skipped(str(entry), "a folder, not an image file (sub-folders are not read)"))
            continue
        try:
            images.append(read_image(entry))
        except DataError as exc:
            skipped.append(Skipped(str(entry), str(exc).removeprefix(f"{entry}: ")))
    return images, skipped


def square(pixels: np.ndarray, side: int) -> np.ndarray:
    """The image padded with zeros (background) to a centred square, then resized to ``side`` (antialiased)."""
    if side < 1:
        raise DataError(f"side must be positive, got {side}")
    height, width = pixels.shape
    edge = max(height, width)
    padded = np.zeros((edge, edge), dtype=np.float32)
    top, left = (edge - height) // 2, (edge - width) // 2
    padded[top : top + height, left : left + width] = pixels
    if edge == side:
        return padded
    resized = Image.fromarray(padded).resize((side, side), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def resized(image: MammoImage, side: int) -> MammoImage:
    """The image as :func:`square` makes it, its pixel spacing scaled to match."""
    edge = max(image.pixels.shape)
    spacing = (
        None if image.spacing_mm is None else (image.spacing_mm[0] * edge / side, image.spacing_mm[1] * edge / side)
    )
    return replace(image, pixels=square(image.pixels, side), spacing_mm=spacing)


def _label_index(raw: str, classes: Sequence[str]) -> int | None:
    wanted = raw.strip().lower()
    for index, name in enumerate(classes):
        if wanted == name.lower():
            return index
    return None


def read_labelled_folder(
    folder: Path, classes: Sequence[str], *, on_bad_case: Literal["skip", "stop"] = "skip"
) -> tuple[list[MammoCase], list[Skipped]]:
    """A site's folder: ``labels.csv`` (``file,label[,patient]``) and the images it names.

    A missing CSV, a missing column, an empty or repeated file name or a label outside ``classes`` is a
    :class:`DataError` naming the file and row. An image that cannot be read is skipped (or stops the job under
    ``on_bad_case="stop"``); an image file the CSV does not list is skipped with that reason."""
    table = folder / LABELS_FILE
    if not table.is_file():
        raise DataError(f"{table} not found: a site folder needs {LABELS_FILE} with columns file,label[,patient]")
    try:
        with open(table, newline="") as handle:
            reader = csv.DictReader(handle)
            columns = {c.strip() for c in reader.fieldnames or ()}
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{table} cannot be read: {exc}") from None
    if not {"file", "label"} <= columns:
        raise DataError(f"{table}: needs columns file and label, found {sorted(columns)}")
    cases: list[MammoCase] = []
    skipped: list[Skipped] = []
    listed: set[str] = set()
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        name = row.get("file", "")
        if not name:
            raise DataError(f"{table}, row {number}: empty file name")
        if name in listed:
            raise DataError(f"{table}, row {number}: file {name!r} is listed twice")
        listed.add(name)
        label = _label_index(row.get("label", ""), classes)
        if label is None:
            raise DataError(
                f"{table}, row {number}: label {row.get('label', '')!r} of {name!r} is not one of {list(classes)}"
            )
        path = folder / name
        try:
            if not path.is_file():
                raise DataError(f"{path}: listed in {LABELS_FILE} but not found")
            image = read_image(path)
        except DataError as exc:
            if on_bad_case == "stop":
                raise
            skipped.append(Skipped(name, str(exc).removeprefix(f"{path}: ")))
            continue
        cases.append(MammoCase(image, label, row.get("patient") or name, name))
    for entry in sorted(folder.iterdir()):
        if (
            entry.is_file()
            and not entry.name.startswith(".")
            and entry.name != LABELS_FILE
            and entry.name not in listed
        ):
            skipped.append(Skipped(entry.name, f"not listed in {LABELS_FILE}"))
    return cases, skipped
