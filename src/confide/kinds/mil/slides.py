"""Whole-slide images as bags of tile feature vectors: one feature file per slide, one folder per site.

A site folder holds ``labels.csv`` (columns ``slide,label``, optional ``patient``: a patient's slides always stay
in one split) and ``features/<slide>.safetensors`` (tensor ``features`` (tiles, dim), optional ``coords``
(tiles, 2)) or ``features/<slide>.h5`` (the same as HDF5 datasets, as CLAM writes them). A slide whose file is
missing, unreadable, empty, not finite, not (tiles, dim), or of another feature dimension than the others is
skipped and named, or stops the job with a :class:`~confide.errors.CaseError` under ``on_bad_case="stop"``.

:func:`write_synthetic_slides` writes such folders with a known signal, see its docstring.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from confide.errors import CaseError, ConfigError, DataError
from confide.records import Skipped

FEATURE_SUFFIXES = (".safetensors", ".h5", ".hdf5")
OnBad = Literal["skip", "stop"]


@dataclass(frozen=True)
class SlideBag:
    """One slide: its tile features (tiles, dim) float32, its label and patient, and optionally where each tile
    lies (coords, pixels) and which tiles are tumour (``tumour``, generated slides only)."""

    slide: str
    patient: str
    label: int
    features: np.ndarray
    coords: np.ndarray | None = None
    tumour: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass(frozen=True)
class SlideSet:
    """Slides of one split (or of several sites' splits pooled)."""

    bags: tuple[SlideBag, ...]

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, index: int) -> SlideBag:
        return self.bags[index]

    def labels(self) -> np.ndarray:
        return np.array([bag.label for bag in self.bags], dtype=np.int64)

    @classmethod
    def concat(cls, parts: Sequence[SlideSet]) -> SlideSet:
        return cls(tuple(bag for part in parts for bag in part.bags))


@dataclass(frozen=True)
class SlideSite:
    """A site's usable slides, and the ones it skipped with the reason."""

    name: str
    bags: tuple[SlideBag, ...]
    skipped: tuple[Skipped, ...] = ()


def _as_bag_arrays(features: np.ndarray, coords: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    if features.ndim == 3 and features.shape[0] == 1:  # some exporters keep a batch axis of one
        features = features[0]
    if features.ndim != 2:
        raise ValueError(f"features must be (tiles, dim), got shape {tuple(features.shape)}")
    if not (np.issubdtype(features.dtype, np.floating) or np.issubdtype(features.dtype, np.integer)):
        raise ValueError(f"features must be numbers, got dtype {features.dtype}")
    if features.shape[0] == 0:
        raise ValueError("holds no tiles")
    if features.shape[1] == 0:
        raise ValueError("features have dimension 0")
    out = np.ascontiguousarray(features, dtype=np.float32)
    bad = int((~np.isfinite(out)).any(axis=1).sum())
    if bad:
        raise ValueError(f"{bad} of {out.shape[0]} tiles hold NaN or infinite features")
    if coords is not None:
        if coords.ndim == 3 and coords.shape[0] == 1:
            coords = coords[0]
        if coords.shape != (out.shape[0], 2):
            raise ValueError(f"coords have shape {tuple(coords.shape)}, expected ({out.shape[0]}, 2)")
    return out, coords


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    wanted = ("features", "coords", "tumour")
    if path.suffix == ".safetensors":
        import torch
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            if "features" not in keys:
                raise ValueError(f"no tensor 'features' (it holds {sorted(keys)[:5]})")
            out = {}
            for key in wanted:
                if key in keys:
                    tensor = handle.get_tensor(key)
                    out[key] = tensor.to(torch.float32 if tensor.is_floating_point() else torch.int64).numpy()
            return out
    import h5py

    with h5py.File(path, "r") as handle:
        if "features" not in handle:
            raise ValueError(f"no dataset 'features' (it holds {sorted(handle.keys())[:5]})")
        return {key: np.asarray(handle[key][()]) for key in wanted if key in handle}


def read_bag(path: Path, *, slide: str, label: int, patient: str) -> SlideBag:
    """One slide's feature file; a :class:`CaseError` naming the slide and the file says what is wrong."""
    try:
        arrays = _read_arrays(path)
        features, coords = _as_bag_arrays(arrays["features"], arrays.get("coords"))
    except Exception as exc:  # a foreign file may fail in any library's own way; each is reported, none is fatal
        reason = str(exc).strip() or type(exc).__name__
        raise CaseError(slide, f"{path.name}: {reason}") from None
    tumour = arrays.get("tumour")
    if tumour is not None:
        tumour = tumour.reshape(-1).astype(bool) if tumour.size == len(features) else None
    return SlideBag(slide=slide, patient=patient, label=label, features=features, coords=coords, tumour=tumour)


def feature_file(folder: Path, slide: str) -> Path | None:
    """``folder/features/<slide>`` with the first suffix that exists (safetensors before HDF5)."""
    for suffix in FEATURE_SUFFIXES:
        path = folder / "features" / f"{slide}{suffix}"
        if path.is_file():
            return path
    return None


def _problem(slide: str, reason: str, on_bad: OnBad, skipped: list[Skipped]) -> None:
    if on_bad == "stop":
        raise CaseError(slide, reason)
    skipped.append(Skipped(slide, reason))


def read_labels(
    folder: Path, *, classes: int | None, on_bad: OnBad
) -> tuple[list[tuple[str, int, str]], list[Skipped]]:
    """(slide, label, patient) for each usable row of ``folder/labels.csv``, and the rows skipped."""
    path = folder / "labels.csv"
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"site {folder.name}: {path} cannot be read: {exc}") from None
    if not rows or not {"slide", "label"} <= set(rows[0]):
        raise DataError(f"site {folder.name}: {path} needs a header with columns slide,label (optional patient)")
    out: list[tuple[str, int, str]] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=2):
        slide = (row.get("slide") or "").strip()
        text = (row.get("label") or "").strip()
        if not slide:
            _problem(f"labels.csv line {number}", "no slide name", on_bad, skipped)
            continue
        if slide in seen:
            _problem(slide, f"listed twice in labels.csv (line {number})", on_bad, skipped)
            continue
        seen.add(slide)
        try:
            label = int(text)
        except ValueError:
            _problem(slide, f"label {text!r} is not a class number", on_bad, skipped)
            continue
        if label < 0 or (classes is not None and label >= classes):
            _problem(slide, f"label {label} is outside 0..{(classes or 1) - 1}", on_bad, skipped)
            continue
        out.append((slide, label, (row.get("patient") or "").strip() or slide))
    return out, skipped


def read_site(
    folder: Path,
    *,
    name: str | None = None,
    classes: int | None = None,
    dim: int | None = None,
    max_slides: int | None = None,
    seed: int = 0,
    on_bad_case: OnBad = "skip",
    on_slide: Callable[[str, str], None] | None = None,
) -> SlideSite:
    """Every usable slide of one site folder (the site ``name``, default the folder's name). ``max_slides`` keeps
    a seeded random subset of the rows; ``dim`` skips slides of another feature dimension (see :func:`keep_dim`)."""
    name = name or folder.name
    rows, skipped = read_labels(folder, classes=classes, on_bad=on_bad_case)
    if max_slides is not None and len(rows) > max_slides:
        rng = np.random.default_rng(np.random.SeedSequence([seed, *name.encode()]))
        rows = [rows[i] for i in sorted(rng.choice(len(rows), size=max_slides, replace=False))]
    bags: list[SlideBag] = []
    for slide, label, patient in rows:
        path = feature_file(folder, slide)
        if path is None:
            _problem(slide, f"no features/{slide}.safetensors or .h5", on_bad_case, skipped)
            continue
        try:
            bags.append(read_bag(path, slide=slide, label=label, patient=patient))
        except CaseError as exc:
            _problem(slide, exc.reason, on_bad_case, skipped)
        if on_slide is not None:
            on_slide(name, slide)
    site = SlideSite(name, tuple(bags), tuple(skipped))
    return site if dim is None else keep_dim(site, dim, on_bad_case)


def common_dim(sites: Sequence[SlideSite]) -> int:
    """The feature dimension most slides share (ties: the smaller dimension)."""
    counts = Counter(bag.dim for site in sites for bag in site.bags)
    if not counts:
        raise DataError(f"no usable slide in site(s) {[s.name for s in sites]}")
    return min(counts, key=lambda d: (-counts[d], d))


def keep_dim(site: SlideSite, dim: int, on_bad_case: OnBad = "skip") -> SlideSite:
    """The site without its slides whose feature dimension is not ``dim`` (skipped, named)."""
    skipped = list(site.skipped)
    for bag in site.bags:
        if bag.dim != dim:
            _problem(bag.slide, f"feature dimension {bag.dim}, the other slides have {dim}", on_bad_case, skipped)
    return replace(site, bags=tuple(b for b in site.bags if b.dim == dim), skipped=tuple(skipped))


def split_by_patient(bags: Sequence[SlideBag], test_fraction: float, seed: int, site: str) -> tuple[SlideSet, SlideSet]:
    """A seeded train/test split of one site's slides by patient, stratified by the patient's label (the highest
    class among its slides): a share ``test_fraction`` of each class's patients, at least one patient of each class
    with two or more patients on each side."""
    patients: dict[str, list[SlideBag]] = {}
    for bag in bags:
        patients.setdefault(bag.patient, []).append(bag)
    if len(patients) < 2:
        raise DataError(f"site {site} has {len(patients)} usable patient(s); at least 2 are needed to train and test")
    rng = np.random.default_rng(np.random.SeedSequence([seed, *site.encode()]))
    by_label: dict[int, list[str]] = {}
    for patient, slides in sorted(patients.items()):
        by_label.setdefault(max(b.label for b in slides), []).append(patient)
    test: list[str] = []
    for _, group in sorted(by_label.items()):
        order = [group[i] for i in rng.permutation(len(group))]
        n = round(test_fraction * len(order))
        if len(order) >= 2:
            n = min(max(n, 1), len(order) - 1)
        test += order[:n]
    names = sorted(patients)
    if not test:
        test = [names[int(rng.integers(len(names)))]]
    elif len(test) == len(names):
        test = test[1:]
    chosen = set(test)
    return (
        SlideSet(tuple(b for b in bags if b.patient not in chosen)),
        SlideSet(tuple(b for b in bags if b.patient in chosen)),
    )


# ---- generated slides -------------------------------------------------------------------------------------------


def _write_bag(path: Path, features: np.ndarray, coords: np.ndarray, tumour: np.ndarray) -> None:
    arrays = {"features": features, "coords": coords, "tumour": tumour.astype(np.uint8)}
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, str(path), metadata={"generator": "confide.kinds.mil.slides.write_synthetic_slides"})
        return
    import h5py

    with h5py.File(path, "w") as handle:
        for key, value in arrays.items():
            handle.create_dataset(key, data=value)


def write_synthetic_slides(
    root: Path,
    sites: int,
    slides_per_site: int,
    tiles: int,
    dim: int,
    seed: int,
    *,
    fmt: Literal["safetensors", "h5", "mixed"] = "safetensors",
    tumour_share: tuple[float, float] = (0.05, 0.15),
    signal: float = 3.0,
    on_slide: Callable[[str, str], None] | None = None,
) -> list[Path]:
    """Write ``sites`` site folders ``root/site-<k>`` of ``slides_per_site`` generated slides each.

    Every tile is a tissue type (one of four centres in feature space) plus unit Gaussian noise. A positive slide
    (label 1) holds a spatially clustered share of tumour tiles, drawn uniformly from ``tumour_share``, shifted by
    ``signal`` along one fixed unit direction; a negative slide (label 0) holds none. Sites differ as scanners and
    stains do: each applies its own scale (0.8-1.25) and offset (N(0, 0.5^2) per feature) to all its tiles, and its
    share of positive slides runs from 0.3 (first site) to 0.7 (last). Slides hold between half and 1.5 times
    ``tiles`` tiles; a patient has one or two slides. Each file also holds ``tumour`` (which tiles are tumour), and
    ``root/synthetic.json`` records the parameters. ``fmt="mixed"`` alternates safetensors and HDF5 files.
    Returns the site folders in site order."""
    for value, what in ((sites, "sites"), (slides_per_site, "slides per site"), (tiles, "tiles"), (dim, "dim")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{what} must be an integer >= 1, got {value!r}")
    if slides_per_site < 2 or not (0 < tumour_share[0] <= tumour_share[1] < 1):
        raise ConfigError(
            f"need at least 2 slides per site and 0 < tumour_share <= 1, got {slides_per_site}, {tumour_share}"
        )
    shared = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    direction = shared.normal(size=dim)
    direction /= np.linalg.norm(direction)
    centres = shared.normal(size=(4, dim))
    folders: list[Path] = []
    manifest: dict[str, object] = {
        "seed": seed,
        "slides_per_site": slides_per_site,
        "tiles": tiles,
        "dim": dim,
        "signal": signal,
        "tumour_share": list(tumour_share),
        "sites": {},
    }
    for s in range(sites):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1, s]))
        name = f"site-{s + 1}"
        folder = root / name
        (folder / "features").mkdir(parents=True, exist_ok=True)
        scale, offset = rng.uniform(0.8, 1.25), rng.normal(0.0, 0.5, size=dim)
        rate = 0.3 + 0.4 * s / max(sites - 1, 1)
        positives = min(max(round(rate * slides_per_site), 1), slides_per_site - 1)
        labels = rng.permutation(np.arange(slides_per_site) < positives).astype(int)
        rows, patient = [], 0
        for i, label in enumerate(labels):
            if i > 0 and rng.random() < 0.6:
                patient += 1
            n = int(rng.integers(max(tiles // 2, 1), tiles + tiles // 2 + 1))
            side = int(np.ceil(np.sqrt(n * 1.3)))
            cells = np.sort(rng.choice(side * side, size=n, replace=False))
            grid = np.stack([cells % side, cells // side], axis=1)
            x = centres[rng.integers(0, 4, size=n)] + rng.normal(size=(n, dim))
            tumour = np.zeros(n, dtype=bool)
            if label:
                k = max(1, round(rng.uniform(*tumour_share) * n))
                centre = grid[rng.integers(n)]
                tumour[np.argsort(((grid - centre) ** 2).sum(axis=1), kind="stable")[:k]] = True
                x[tumour] += signal * direction
            slide = f"{name}-slide{i + 1:03d}"
            suffix = ".h5" if fmt == "h5" or (fmt == "mixed" and i % 2) else ".safetensors"
            features = (scale * x + offset).astype(np.float32)
            _write_bag(folder / "features" / f"{slide}{suffix}", features, (grid * 256).astype(np.int64), tumour)
            rows.append((slide, int(label), f"{name}-patient{patient + 1:03d}"))
            if on_slide is not None:
                on_slide(name, slide)
        with open(folder / "labels.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["slide", "label", "patient"])
            writer.writerows(rows)
        manifest["sites"][name] = {"scale": float(scale), "positive_share": positives / slides_per_site}  # type: ignore[index]
        folders.append(folder)
    (root / "synthetic.json").write_text(json.dumps(manifest, indent=2))
    return folders
