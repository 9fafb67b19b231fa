"""The mini-MIAS mammograms (``Info.txt`` and ``images/mdbNNN.png``) dealt to simulated sites.

MIAS is one centre. To study a federation on it, its 161 patients (each a pair of films: mdb001 + mdb002, ...; odd
numbers are right breasts, even numbers left) are dealt to ``n_sites`` sites: patients are ordered by background
tissue (then at random, seeded) and dealt in turn, so each site gets about the same number of patients and the same
tissue mix. Within a site, patients are split into training and test, stratified by the target's labels. A
patient's two films are always on one site and on one side of the split. The partition is computed from ``Info.txt``
alone, so a site in a deployment re-derives exactly the simulation's partition from the seed and reads only its
own images.

Acquisition differences (``shift=True``) stand in for different vendors and scanners. They are fixed per site index
(not per job seed), applied to the 256-pixel films in this order (:meth:`SiteShift.apply`):

1. resolution: the matrix resized by ``scale`` (pixel spacing 0.8 mm / ``scale``);
2. blur: a Gaussian of ``blur_sigma`` pixels (the detector's modulation transfer);
3. noise: additive Gaussian of standard deviation ``noise_std``, seeded per site and image (quantum noise);
4. the vendor's display curve: ``gamma`` (x ** gamma), then ``contrast`` about mid-grey, then ``brightness``;
   clipped to [0, 1].

The table :data:`SHIFTS` gives sites 1-3 (site 1 is the film as digitised); further sites draw theirs from a
generator seeded by their index. At a 64-pixel input, the display curve is by far the strongest of the four.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from confide.errors import DataError
from confide.kinds.mammography.reading import MammoCase, MammoImage, read_raster
from confide.records import Skipped

TISSUES = ("F", "G", "D")
ABNORMALITIES = frozenset({"CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM"})
MIAS_SPACING_MM = 0.8  # 200 micrometre films reduced from 1024 to 256 pixels
_REF = re.compile(r"^mdb(\d{3})$")
_SHIFT_SEED = 20_240_611


@dataclass(frozen=True)
class MiasRecord:
    """One film's lines of Info.txt (a film with two abnormalities has two lines)."""

    ref: str
    tissue: str
    classes: tuple[str, ...]
    severities: tuple[str, ...] = ()

    @property
    def number(self) -> int:
        match = _REF.match(self.ref)
        assert match is not None  # checked when parsed
        return int(match.group(1))

    @property
    def patient(self) -> str:
        return f"mias-p{(self.number + 1) // 2:03d}"

    @property
    def laterality(self) -> Literal["L", "R"]:
        return "L" if self.number % 2 == 0 else "R"

    @property
    def abnormal(self) -> bool:
        return any(c != "NORM" for c in self.classes)


def parse_info(path: Path) -> dict[str, MiasRecord]:
    """Every film of ``Info.txt`` by reference (``mdb001``), its repeated lines merged. Lines that do not start
    with a reference are the file's prose and are passed over; a reference line that cannot be read is a
    :class:`DataError` naming the line."""
    try:
        lines = path.read_text(encoding="latin-1").splitlines()
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc}") from None
    records: dict[str, MiasRecord] = {}
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens or not _REF.match(tokens[0]):
            continue
        if len(tokens) < 3:
            raise DataError(f"{path}, line {number}: expected 'mdbNNN TISSUE CLASS ...', got {line.strip()!r}")
        ref, tissue, klass = tokens[0], tokens[1].upper(), tokens[2].upper()
        if tissue not in TISSUES:
            raise DataError(f"{path}, line {number}: background tissue {tokens[1]!r} is not one of {list(TISSUES)}")
        if klass not in ABNORMALITIES:
            raise DataError(f"{path}, line {number}: abnormality {tokens[2]!r} is not one of {sorted(ABNORMALITIES)}")
        severity = (tokens[3].upper(),) if len(tokens) > 3 and tokens[3].upper() in ("B", "M") else ()
        previous = records.get(ref)
        if previous is None:
            records[ref] = MiasRecord(ref, tissue, (klass,), severity)
            continue
        if previous.tissue != tissue:
            raise DataError(f"{path}, line {number}: {ref} is listed with tissues {previous.tissue} and {tissue}")
        classes = previous.classes if klass in previous.classes else (*previous.classes, klass)
        records[ref] = MiasRecord(ref, tissue, classes, previous.severities + severity)
    if not records:
        raise DataError(f"{path}: no film lines ('mdbNNN ...') found")
    return records


def mias_label(record: MiasRecord, target: str) -> int:
    """The class index of a film for ``target`` ("density": F/G/D, "abnormal": normal/abnormal)."""
    if target == "density":
        return TISSUES.index(record.tissue)
    if target == "abnormal":
        return int(record.abnormal)
    raise DataError(f"MIAS has labels for targets 'density' and 'abnormal', not {target!r}")


@dataclass(frozen=True)
class SiteShift:
    """A site's simulated acquisition (see the module docstring for the order of the steps)."""

    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0
    blur_sigma: float = 0.0
    noise_std: float = 0.0
    scale: float = 1.0

    def describe(self) -> str:
        if self == SiteShift():
            return "acquisition: as digitised (reference site, no simulated shift)"
        return (
            f"acquisition (simulated): gamma {self.gamma:.2f}, contrast {self.contrast:.2f}, "
            f"brightness {self.brightness:+.2f}, blur {self.blur_sigma:.1f} px, noise sd {self.noise_std:.3f}, "
            f"matrix x{self.scale:.2f}"
        )

    def apply(self, image: MammoImage, rng: np.random.Generator) -> MammoImage:
        x = image.pixels.astype(np.float32, copy=True)
        spacing = image.spacing_mm
        if self.scale != 1.0:
            h, w = x.shape
            size = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
            x = np.asarray(Image.fromarray(x).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
            if spacing is not None:
                spacing = (spacing[0] * h / size[1], spacing[1] * w / size[0])
        if self.blur_sigma > 0:
            x = gaussian_blur(x, self.blur_sigma)
        if self.noise_std > 0:
            x = x + rng.normal(0.0, self.noise_std, size=x.shape).astype(np.float32)
        x = np.clip(x, 0.0, 1.0) ** self.gamma
        x = (x - 0.5) * self.contrast + 0.5 + self.brightness
        return replace(image, pixels=np.clip(x, 0.0, 1.0).astype(np.float32), spacing_mm=spacing)


SHIFTS: tuple[SiteShift, ...] = (
    SiteShift(),  # the film as digitised
    SiteShift(gamma=0.7, contrast=0.85, brightness=0.08, blur_sigma=1.5, noise_std=0.0, scale=0.75),  # soft, bright
    SiteShift(gamma=1.4, contrast=1.2, brightness=-0.05, blur_sigma=0.0, noise_std=0.04, scale=1.0),  # hard, noisy
)


def site_shift(index: int) -> SiteShift:
    """The acquisition of site ``index`` (0-based): :data:`SHIFTS`, then drawn from a generator seeded by the index."""
    if index < len(SHIFTS):
        return SHIFTS[index]
    rng = np.random.default_rng([_SHIFT_SEED, index])
    return SiteShift(
        gamma=float(np.exp(rng.uniform(-0.4, 0.4))),
        contrast=float(rng.uniform(0.8, 1.25)),
        brightness=float(rng.uniform(-0.06, 0.08)),
        blur_sigma=float(rng.choice([0.0, 1.0, 1.5])),
        noise_std=float(rng.choice([0.0, 0.02, 0.04])),
        scale=float(rng.choice([0.75, 1.0])),
    )


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = x.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(
            (float(t) * np.take(padded, np.arange(k, k + n), axis=axis) for k, t in enumerate(taps)),
            start=np.zeros_like(out),
        )
    return out.astype(np.float32)


def site_names(n_sites: int) -> list[str]:
    return [f"mias-{i + 1}" for i in range(n_sites)]


def _keys(items: Sequence[str], seed: int, salt: str) -> dict[str, float]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, *salt.encode()]))
    return dict(zip(sorted(items), rng.random(len(items)), strict=True))


def assign_sites(records: Mapping[str, MiasRecord], n_sites: int, seed: int) -> dict[str, int]:
    """Site index of every patient: patients ordered by the tissue of their lower-numbered film, then at random
    (seeded), and dealt to the sites in turn."""
    if n_sites < 1:
        raise DataError(f"at least one site is needed, got {n_sites}")
    first: dict[str, MiasRecord] = {}
    for record in sorted(records.values(), key=lambda r: r.number):
        first.setdefault(record.patient, record)
    if len(first) < 2 * n_sites:
        raise DataError(f"{len(first)} patients cannot make {n_sites} sites of at least 2 patients each")
    keys = _keys(list(first), seed, "sites")
    order = sorted(first, key=lambda p: (TISSUES.index(first[p].tissue), keys[p]))
    return {patient: i % n_sites for i, patient in enumerate(order)}


def stratified_patient_split(
    strata: Mapping[str, Hashable], test_fraction: float, seed: int, salt: str
) -> tuple[set[str], set[str]]:
    """(train, test) patients: patients ordered by stratum, then at random (seeded by ``seed`` and ``salt``); every
    patient at which the running count of ``test_fraction`` crosses an integer goes to test (systematic sampling,
    so each stratum gets its share and the total is ``test_fraction`` of the patients). At least one each side."""
    patients = sorted(strata)
    if len(patients) < 2:
        raise DataError(f"{salt}: {len(patients)} patient(s); at least 2 are needed to train and test")
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    keys = _keys(patients, seed, salt)
    order = sorted(patients, key=lambda p: (repr(strata[p]), keys[p]))
    offset = np.random.default_rng(np.random.SeedSequence([seed, *salt.encode(), 1])).random()
    test = {
        p
        for i, p in enumerate(order)
        if np.floor((i + 1) * test_fraction + offset) > np.floor(i * test_fraction + offset)
    }
    if not test:
        test = {order[0]}
    if len(test) == len(order):
        test.discard(order[-1])
    return set(order) - test, test


@dataclass(frozen=True)
class MiasSite:
    name: str
    shift: SiteShift | None
    train: tuple[MammoCase, ...]
    test: tuple[MammoCase, ...]
    skipped: tuple[Skipped, ...] = ()


def mias_sites(
    root: Path,
    *,
    target: str,
    n_sites: int = 3,
    seed: int = 0,
    test_fraction: float = 0.25,
    shift: bool = True,
    only: Sequence[str] = (),
    max_images: int | None = None,
    on_bad_case: Literal["skip", "stop"] = "skip",
) -> list[MiasSite]:
    """The MIAS films at ``root`` dealt to ``n_sites`` sites (only the named ones are read), each split into training
    and test patients stratified by the target's labels. ``max_images`` keeps whole patients, in seeded order."""
    records = parse_info(root / "Info.txt")
    names = site_names(n_sites)
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise DataError(f"MIAS split into {n_sites} sites has sites {names}, not {unknown}")
    sites = assign_sites(records, n_sites, seed)
    out: list[MiasSite] = []
    for index, name in enumerate(names):
        if only and name not in only:
            continue
        mine = sorted((r for r in records.values() if sites[r.patient] == index), key=lambda r: r.number)
        if max_images is not None:
            keys = _keys(sorted({r.patient for r in mine}), seed, f"{name}/cap")
            kept: set[str] = set()
            for patient in sorted(keys, key=keys.__getitem__):
                count = sum(1 for r in mine if r.patient in kept | {patient})
                if count > max_images:
                    break
                kept.add(patient)
            mine = [r for r in mine if r.patient in kept]
        site_shift_ = site_shift(index) if shift else None
        cases: list[MammoCase] = []
        skipped: list[Skipped] = []
        for record in mine:
            path = root / "images" / f"{record.ref}.png"
            try:
                image = read_raster(path)
            except DataError as exc:
                if on_bad_case == "stop":
                    raise
                skipped.append(Skipped(record.ref, str(exc).removeprefix(f"{path}: ")))
                continue
            image = replace(image, spacing_mm=(MIAS_SPACING_MM, MIAS_SPACING_MM), laterality=record.laterality)
            if site_shift_ is not None:
                image = site_shift_.apply(image, np.random.default_rng([_SHIFT_SEED, index, record.number]))
            cases.append(MammoCase(image, mias_label(record, target), record.patient, record.ref))
        strata: dict[str, set[int]] = {}
        for record in mine:  # from Info.txt, so the split does not depend on which files could be read
            strata.setdefault(record.patient, set()).add(mias_label(record, target))
        train, test = stratified_patient_split(
            {p: tuple(sorted(labels)) for p, labels in strata.items()}, test_fraction, seed, name
        )
        out.append(
            MiasSite(
                name,
                site_shift_,
                tuple(c for c in cases if c.patient in train),
                tuple(c for c in cases if c.patient in test),
                tuple(skipped),
            )
        )
    return out
