"""Tile feature extraction for histopathology, offline: tiles in, one ``<slide>.safetensors`` of features out.

A source folder holds, per slide, either a sub-folder of tile images (``<slide>/*.png|jpg``, used as they are,
resized to the tile size when they differ; a tile name ending in two numbers, ``..._<x>_<y>.png``, gives its
coordinates) or one large image (``<slide>.png|jpg|tif``) cut into a grid of non-overlapping tiles, where tiles
with less than ``min_tissue`` tissue are dropped (a pixel is tissue when its HSV saturation is at least 0.07 and
its value at least 0.1: white glass and black borders are not). Pillow reads the images; whole-slide formats
(.svs, .ndpi, .mrxs) need a level exported to TIFF or PNG first (OpenSlide is not a dependency).

Two extractors:

- ``resnet18`` / ``resnet50`` with weights given by the user as a safetensors file (never a pickle) in
  torchvision's names (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...; ``fc.*`` and other extra arrays are
  ignored; a prefix ``module.``, ``model.``, ``backbone.``, ``encoder.`` or ``trunk.`` is stripped): the pooled
  output of the last block, 512 or 2048 values, after ImageNet normalisation. torchvision is not needed.
- ``colour-texture`` (no weights): 40 fixed statistics per tile (:func:`colour_texture`). Deterministic and free of
  any download, but much weaker than a pretrained network: good for testing a pipeline, not for judging MIL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from confide.errors import ConfigError, DataError
from confide.workloads.base import Skipped

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
ARCHS = ("auto", "resnet18", "resnet50", "colour-texture")
PREFIXES = ("module.", "model.", "backbone.", "encoder.", "trunk.")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (height, width, 3) uint8."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"image {path} cannot be read: {exc}") from None


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = rgb.astype(np.float32) / 255.0
    value = x.max(axis=-1)
    chroma = value - x.min(axis=-1)
    saturation = np.where(value > 0, chroma / np.maximum(value, 1e-6), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    safe = np.maximum(chroma, 1e-6)
    hue = np.where(value == r, ((g - b) / safe) % 6, np.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return np.where(chroma > 0, hue / 6.0, 0.0), saturation, value


def tissue_fractions(image: np.ndarray, tile_size: int) -> np.ndarray:
    """The share of tissue pixels (saturation >= 0.07 and value >= 0.1) in each tile of the grid (rows, cols)."""
    rows, cols = image.shape[0] // tile_size, image.shape[1] // tile_size
    _, saturation, value = _hsv(image[: rows * tile_size, : cols * tile_size])
    tissue = (saturation >= 0.07) & (value >= 0.1)
    return tissue.reshape(rows, tile_size, cols, tile_size).mean(axis=(1, 3))


def colour_texture(tile: np.ndarray) -> np.ndarray:
    """40 statistics of one RGB tile: a 12-bin hue histogram weighted by saturation, 8-bin saturation and value
    histograms (each summing to one), the mean and standard deviation of R, G and B, and of the grey image its
    standard deviation, 16-bin entropy, mean and standard deviation of the gradient magnitude, share of pixels
    with a gradient above 0.1, and mean absolute Laplacian."""
    hue, saturation, value = _hsv(tile)
    hue_hist = np.histogram(hue, bins=12, range=(0, 1), weights=saturation)[0]
    hue_hist = hue_hist / hue_hist.sum() if hue_hist.sum() > 0 else hue_hist
    n = saturation.size
    sat_hist = np.histogram(saturation, bins=8, range=(0, 1))[0] / n
    val_hist = np.histogram(value, bins=8, range=(0, 1))[0] / n
    rgb = tile.reshape(-1, 3).astype(np.float32) / 255.0
    grey = (tile.astype(np.float32) / 255.0) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    p = np.histogram(grey, bins=16, range=(0, 1))[0] / n
    entropy = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    gy, gx = np.abs(np.diff(grey, axis=0))[:, :-1], np.abs(np.diff(grey, axis=1))[:-1, :]
    magnitude = np.sqrt(gx**2 + gy**2)
    laplacian = np.abs(4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:])
    texture = [grey.std(), entropy, magnitude.mean(), magnitude.std(), (magnitude > 0.1).mean(), laplacian.mean()]
    parts = [hue_hist, sat_hist, val_hist, rgb.mean(axis=0), rgb.std(axis=0), np.array(texture)]
    return np.concatenate(parts).astype(np.float32)


class _Block(nn.Module):
    """torchvision's BasicBlock (resnet18) or Bottleneck (resnet50, stride on the 3x3 convolution)."""

    def __init__(self, inplanes: int, planes: int, stride: int, bottleneck: bool) -> None:
        super().__init__()
        out = planes * (4 if bottleneck else 1)
        self.bottleneck = bottleneck
        if bottleneck:
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
        else:
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(planes), nn.BatchNorm2d(planes if bottleneck else out)
        self.downsample = (
            nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
            if stride != 1 or inplanes != out
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.bottleneck:
            y = self.bn3(self.conv3(torch.relu(y)))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNetTrunk(nn.Module):
    """A ResNet without its classifier, its arrays named as torchvision names them."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        bottleneck = arch == "resnet50"
        depths = (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(_Block(inplanes, planes, 2 if (j == 0 and i > 0) else 1, bottleneck))
                inplanes = planes * (4 if bottleneck else 1)
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.dim = inplanes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x.mean(dim=(2, 3))


def load_resnet(path: Path, arch: str = "auto") -> ResNetTrunk:
    """A ResNet trunk with the weights of a safetensors file; a :class:`ConfigError` says what does not fit."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:  # missing file, a pickle, a truncated header: all refused, none unpickled
        raise ConfigError(
            f"--weights {path}: not a readable safetensors file ({exc}). Convert a torch checkpoint once, where it "
            "is trusted: safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
        ) from None
    for prefix in PREFIXES:
        if "conv1.weight" not in state and f"{prefix}conv1.weight" in state:
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if arch == "auto":
        arch = "resnet50" if "layer1.0.conv3.weight" in state else "resnet18"
    if arch not in ("resnet18", "resnet50"):
        raise ConfigError(f"--arch {arch!r}: weights need resnet18 or resnet50 (or auto)")
    model = ResNetTrunk(arch)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise ConfigError(f"--weights {path}: not {arch} weights in torchvision's names; missing {missing[:5]}")
    for name, value in expected.items():
        if name in state and tuple(state[name].shape) != tuple(value.shape):
            raise ConfigError(
                f"--weights {path}: {name} has shape {tuple(state[name].shape)}, {arch} needs {tuple(value.shape)}"
            )
        if name in state and value.dtype.is_floating_point != state[name].dtype.is_floating_point:
            raise ConfigError(f"--weights {path}: {name} has dtype {state[name].dtype}")
        if name in state and value.dtype.is_floating_point and not torch.isfinite(state[name]).all():
            raise ConfigError(f"--weights {path}: {name} holds NaN or infinite values")
    model.load_state_dict({k: state[k].to(v.dtype) if k in state else v for k, v in expected.items()})
    return model.eval()


@dataclass(frozen=True)
class Extractor:
    """What turns a batch of tiles (n, size, size, 3) uint8 into features (n, dim) float32."""

    name: str
    dim: int
    run: Callable[[np.ndarray], np.ndarray]


def make_extractor(weights: Path | None, arch: str = "auto") -> Extractor:
    if arch not in ARCHS:
        raise ConfigError(f"--arch {arch!r}: expected one of {list(ARCHS)}")
    if weights is None:
        if arch in ("resnet18", "resnet50"):
            raise ConfigError(f"--arch {arch} needs --weights (a safetensors file); without weights use colour-texture")
        return Extractor("colour-texture", 40, lambda tiles: np.stack([colour_texture(t) for t in tiles]))
    if arch == "colour-texture":
        raise ConfigError("--arch colour-texture takes no --weights")
    model = load_resnet(weights, arch)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    @torch.inference_mode()
    def run(tiles: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float() / 255.0
        return model((x - mean) / std).numpy().astype(np.float32)

    arch_name = "resnet50" if model.dim == 2048 else "resnet18"
    return Extractor(f"{arch_name} ({weights.name})", model.dim, run)


@dataclass(frozen=True)
class SlideTiles:
    """One slide's tiles: where they lie, and how to read a range of them (tiles, and which were readable)."""

    slide: str
    coords: np.ndarray  # (n, 2) int64, pixels (x, y) of the top-left corner
    read: Callable[[int, int], tuple[np.ndarray, np.ndarray]]


def _fit(rgb: np.ndarray, size: int) -> np.ndarray:
    if rgb.shape[:2] == (size, size):
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))


def tile_folder(folder: Path, tile_size: int) -> SlideTiles:
    """A folder of tile images, in natural name order (``tile_32`` before ``tile_128``)."""
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", p.name)],
    )
    found = [re.search(r"(\d+)\D+(\d+)$", p.stem) for p in files]
    if found and all(found):
        coords = np.array([[int(m.group(1)), int(m.group(2))] for m in found if m], dtype=np.int64)
    else:  # no coordinates in the names: the tile's rank
        coords = np.stack([np.arange(len(files)), np.zeros(len(files), dtype=np.int64)], axis=1).astype(np.int64)

    def read(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((stop - start, tile_size, tile_size, 3), dtype=np.uint8)
        ok = np.ones(stop - start, dtype=bool)
        for i, path in enumerate(files[start:stop]):
            try:
                out[i] = _fit(read_rgb(path), tile_size)
            except DataError:
                ok[i] = False
        return out, ok

    return SlideTiles(folder.name, coords, read)


def image_tiles(path: Path, tile_size: int, min_tissue: float) -> SlideTiles:
    """One large image cut into a grid of tiles, those with less than ``min_tissue`` tissue dropped."""
    image = read_rgb(path)
    rows, cols = np.nonzero(tissue_fractions(image, tile_size) >= min_tissue)
    coords = np.stack([cols * tile_size, rows * tile_size], axis=1).astype(np.int64)

    def read(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        tiles = [image[y : y + tile_size, x : x + tile_size] for x, y in coords[start:stop]]
        return np.stack(tiles) if tiles else np.zeros((0, tile_size, tile_size, 3), np.uint8), np.ones(len(tiles), bool)

    return SlideTiles(path.stem, coords, read)


@dataclass(frozen=True)
class ExtractionReport:
    extractor: str
    dim: int
    written: tuple[Path, ...]
    skipped: tuple[Skipped, ...]


def slide_sources(source: Path) -> list[Path]:
    """The slides of a source folder: its sub-folders (tile folders) and its images (one per slide), by name."""
    if not source.is_dir():
        raise DataError(f"tiles folder {source} does not exist")
    found = sorted(
        p for p in source.iterdir() if not p.name.startswith(".") and (p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES)
    )
    if not found:
        raise DataError(f"{source} holds no slide: expected <slide>/ folders of tiles or <slide>.png|jpg|tif images")
    return found


def extract_features(
    source: Path,
    out: Path,
    *,
    tile_size: int = 224,
    weights: Path | None = None,
    arch: str = "auto",
    batch: int = 64,
    min_tissue: float = 0.5,
    slides: Sequence[Path] | None = None,
    extractor: Extractor | None = None,
    on_slide: Callable[[str, int], None] | None = None,
    on_tiles: Callable[[int], None] | None = None,
) -> ExtractionReport:
    """Write ``out/<slide>.safetensors`` (``features`` (tiles, dim) float32, ``coords`` (tiles, 2) int64, and
    the extractor in the metadata) for every slide of ``source``. A slide that cannot be read or holds no usable
    tile is skipped and named; unreadable tiles are dropped and counted. ``slides`` (default: every slide of
    ``source``) and ``extractor`` (default: from ``weights`` and ``arch``) may be given ready-made.
    ``on_slide(slide, tiles)`` is called as a slide starts, ``on_tiles(n)`` after each batch."""
    if tile_size < 8 or batch < 1 or not 0 <= min_tissue <= 1:
        raise ConfigError(
            f"need tile size >= 8, batch >= 1, 0 <= min tissue <= 1 (got {tile_size}, {batch}, {min_tissue})"
        )
    from safetensors.numpy import save_file

    extractor = extractor or make_extractor(weights, arch)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: list[Skipped] = []
    for path in slides if slides is not None else slide_sources(source):
        name = path.stem if path.is_file() else path.name
        try:
            tiles = tile_folder(path, tile_size) if path.is_dir() else image_tiles(path, tile_size, min_tissue)
        except DataError as exc:
            skipped.append(Skipped(name, str(exc)))
            continue
        n = len(tiles.coords)
        if on_slide is not None:
            on_slide(name, n)
        parts, kept = [], []
        for start in range(0, n, batch):
            images, ok = tiles.read(start, min(start + batch, n))
            if ok.any():
                parts.append(extractor.run(images[ok]))
            kept.append(ok)
            if on_tiles is not None:
                on_tiles(len(ok))
        good = np.concatenate(kept) if kept else np.zeros(0, dtype=bool)
        if not good.all():
            skipped.append(Skipped(name, f"{int((~good).sum())} of {n} tiles unreadable, left out"))
        if not good.any():
            reason = "no readable tile" if n else ("no tile image" if path.is_dir() else "no tile with enough tissue")
            skipped.append(Skipped(name, f"{reason}; no feature file written"))
            continue
        features = np.concatenate(parts).astype(np.float32)
        target = out / f"{name}.safetensors"
        partial = target.with_suffix(".safetensors.partial")
        meta = {"extractor": extractor.name, "tile_size": str(tile_size), "source": path.name}
        save_file({"features": features, "coords": np.ascontiguousarray(tiles.coords[good])}, str(partial), meta)
        partial.replace(target)
        written.append(target)
    return ExtractionReport(extractor.name, extractor.dim, tuple(written), tuple(skipped))
