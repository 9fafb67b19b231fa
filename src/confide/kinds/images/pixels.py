"""One image file as float pixels (C, H, W) in [0, 1], then in the job's channels and size.

- PNG, JPEG, BMP, TIFF, PGM/PPM (Pillow): 8-bit images are divided by 255; 16-bit and 32-bit integer greyscale by the
  full range of the smallest depth (8, 10, 12, 14, 16 or 32 bits) that holds the largest value, since such files often
  carry 12- or 14-bit detector values; palette, CMYK and YCbCr images become RGB, an alpha channel is dropped, and a
  JPEG's EXIF orientation is applied.
- DICOM (pydicom; ``.dcm``, ``.dicom`` or no suffix): greyscale values go through the modality LUT (rescale), then
  the file's window (its first Window Center/Width, DICOM's linear function) or VOI LUT, each scaled by its own output
  range (a LUT's: the lowest to the highest value of its table, which often spans less than its bits allow);
  without either, by the range the stored bits can take. MONOCHROME1 is inverted. Colour (RGB, YBR: pydicom
  gives RGB) is divided by the stored range, palette colour goes through its lookup table.

A file that cannot be used (not an image, truncated, several frames, an unsupported mode or transfer syntax) is a
:class:`~confide.errors.DataError` whose message is the reason, without the path: the site lists it as skipped.
Then :func:`to_channels` makes 1 or 3 channels (colour to grey by luminance, grey repeated to colour) and
:func:`fit_square` pads the image centred to a square with black and resizes it (bilinear, antialiased when it
shrinks), so no image is distorted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from confide.errors import DataError

RASTER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".pnm"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ""})
LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as Pillow's L conversion
_INTEGER_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _depth_scale(values: np.ndarray) -> float:
    """The full range of the smallest detector depth holding the largest value."""
    if values.size and values.min() < 0:
        raise DataError(f"integer image with negative values (down to {int(values.min())})")
    top = int(values.max()) if values.size else 0
    bits = next(b for b in (8, 10, 12, 14, 16, 32) if top <= 2**b - 1)
    return float(2**bits - 1)


def _raster_values(image: Image.Image) -> np.ndarray:
    """(C, H, W) float32 in [0, 1] from an opened Pillow image."""
    frames = int(getattr(image, "n_frames", 1))
    if frames > 1:
        raise DataError(f"holds {frames} frames; expected one 2D image")
    if image.format == "JPEG":
        image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode in ("1", "L", "LA"):
        grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        return grey[None]
    if mode in _INTEGER_GREY:
        values = np.asarray(image).astype(np.float64)
        return (values / _depth_scale(values)).astype(np.float32)[None]
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all():
            raise DataError("a floating-point image with non-finite values")
        if values.size and (values.min() < 0 or values.max() > 1):
            low, high = float(values.min()), float(values.max())
            values = (values - low) / (high - low) if high > low else np.zeros_like(values)
        return values[None]
    if mode in ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "La"):
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return np.moveaxis(rgb, -1, 0)
    raise DataError(f"image mode {mode} is not supported (expected greyscale or colour)")


def read_raster(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            values = _raster_values(image)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    return values


def _first(value: Any) -> float:
    """The first of a DICOM value that may hold several (several windows: the first is the default)."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        return float(value)
    return float(value[0])


def _grey_dicom(ds: Any, stored: np.ndarray) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        if width < 1:
            raise DataError(f"DICOM window width {width} is below 1")
        low = centre - 0.5 - (width - 1) / 2
        out = (values - low) / max(width - 1, 1e-9)
    elif ds.get("VOILUTSequence"):
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])  # 0 entries means 65536
        table = np.asarray(apply_voi_lut(np.arange(first, first + entries, dtype=np.int64), ds), dtype=np.float64)
        low, high = float(table.min()), float(table.max())
        mapped = np.asarray(apply_voi_lut(np.rint(values).astype(np.int64), ds), dtype=np.float64)  # indexes the table
        out = (mapped - low) / (high - low) if high > low else np.zeros_like(mapped)
    else:
        bits = int(ds.BitsStored)
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        ends = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1], dtype=np.int64)
        low, high = (float(v) for v in np.sort(np.asarray(apply_modality_lut(ends, ds), dtype=np.float64)))
        out = (values - low) / (high - low) if high > low else np.zeros_like(values)
    out = np.clip(out, 0.0, 1.0)
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)[None]


def read_dicom(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise DataError(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds:
        raise DataError(f"a DICOM file without pixel data (SOP class {ds.get('SOPClassUID', 'unknown')})")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DataError(f"a DICOM file of {frames} frames; expected one 2D image")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    try:
        stored = ds.pixel_array
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            values = _grey_dicom(ds, stored)
        elif photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            rgb = np.asarray(apply_color_lut(stored, ds))
            values = np.moveaxis(rgb.astype(np.float32) / float(np.iinfo(rgb.dtype).max), -1, 0)
        elif photometric == "RGB" or photometric.startswith("YBR"):
            scale = float(2 ** int(ds.BitsStored) - 1)
            values = np.moveaxis(np.clip(np.asarray(stored, dtype=np.float32) / scale, 0.0, 1.0), -1, 0)
        else:
            raise DataError(f"DICOM photometric interpretation {photometric!r} is not supported")
    except DataError:
        raise
    except Exception as exc:  # pydicom raises many types for broken or unsupported pixel data
        raise DataError(f"DICOM pixel data cannot be decoded ({type(exc).__name__}: {exc})") from None
    if values.ndim != 3 or values.shape[0] not in (1, 3):
        raise DataError(f"DICOM pixel data of shape {tuple(np.shape(stored))} is not one 2D image")
    return values


def read_pixels(path: Path) -> np.ndarray:
    """One image file as (C, H, W) float32 in [0, 1], C 1 or 3, chosen by its suffix (see the module docstring)."""
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        values = read_raster(path)
    elif suffix in DICOM_SUFFIXES:
        values = read_dicom(path)
    else:
        raise DataError(f"suffix {suffix!r} is not an image format read here (DICOM, PNG, JPEG, BMP, TIFF, PGM)")
    if values.shape[1] < 1 or values.shape[2] < 1:
        raise DataError(f"an empty image ({values.shape[1]} x {values.shape[2]} pixels)")
    return values


def to_channels(values: np.ndarray, channels: int) -> np.ndarray:
    """(C, H, W) to ``channels``: colour to grey by luminance, grey repeated three times."""
    if values.shape[0] == channels:
        return values
    if channels == 1:
        return np.tensordot(LUMINANCE, values, axes=1)[None].astype(np.float32)
    return np.repeat(values, 3, axis=0)


def fit_square(values: np.ndarray, side: int) -> np.ndarray:
    """(C, H, W) padded centred to a black square, each channel resized to ``side`` x ``side``."""
    _, height, width = values.shape
    edge = max(height, width)
    if height != width:
        padded = np.zeros((values.shape[0], edge, edge), dtype=np.float32)
        top, left = (edge - height) // 2, (edge - width) // 2
        padded[:, top : top + height, left : left + width] = values
        values = padded
    if edge == side:
        return values.astype(np.float32, copy=False)
    planes = [
        np.asarray(Image.fromarray(plane.astype(np.float32)).resize((side, side), Image.Resampling.BILINEAR))
        for plane in values
    ]
    return np.clip(np.stack(planes), 0.0, 1.0).astype(np.float32)


def load_image(path: Path, channels: int, side: int) -> np.ndarray:
    """The image file as the network takes it: (channels, side, side) float32 in [0, 1]."""
    return fit_square(to_channels(read_pixels(path), channels), side)
