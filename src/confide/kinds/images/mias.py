"""The mini-MIAS mammograms (``Info.txt`` and ``images/mdbNNN.png``) dealt to simulated sites.

MIAS is one centre. To study a federation on it, its 161 patients (each a pair of films: mdb001 + mdb002, ...; odd
numbers are right breasts, even numbers left) are dealt to ``sites`` sites: patients are ordered by background
tissue (then at random, seeded) and dealt in turn, so each site gets about the same number of patients and the same
tissue mix. Within a site, patients are split into training and test, stratified by their labels. A patient's two
films are always on one site and on one side of the split. The partition is computed from ``Info.txt`` alone, so a
site in a deployment re-derives exactly the simulation's partition from the job's seed and reads only its own films.

A film's class is its background tissue when the job's classes are F, G and D (fatty, fatty-glandular,
dense-glandular), or whether it shows an abnormality when they are normal and abnormal. Each site's films go through
its simulated acquisition (:mod:`confide.kinds.images.mias_shift`) when ``site_shift`` is on, then are padded square
and resized to the job's image size like any other image (:func:`confide.kinds.images.pixels.fit_square`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from confide.api import Place, SiteData
from confide.errors import DataError
from confide.kinds.images.config import ImageTaskConfig
from confide.kinds.images.dataset import ImageSet
from confide.kinds.images.mias_shift import SHIFT_SEED, SiteShift, site_shift
from confide.kinds.images.pixels import fit_square, read_pixels, to_channels

INFO = "Info.txt"
TISSUES = ("F", "G", "D")
ABNORMALITY = ("normal", "abnormal")
ABNORMALITIES = frozenset({"CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM"})
MIAS_SPACING_MM = 0.8  # 200 micrometre films reduced from 1024 to 256 pixels
_REF = re.compile(r"^mdb(\d{3})$")


def is_mias(root: Path) -> bool:
    """Whether ``root`` is the mini-MIAS folder (it holds ``Info.txt``)."""
    return (Path(root) / INFO).is_file()


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


def labelling(classes: Sequence[str]) -> Callable[[MiasRecord], int]:
    """A film's class index in ``classes``: by background tissue for classes F, G, D, by abnormality for classes
    normal, abnormal (any order, any case); other classes are refused, naming the two that MIAS labels."""
    index = {name.casefold(): i for i, name in enumerate(classes)}
    if set(index) == {t.casefold() for t in TISSUES}:
        return lambda record: index[record.tissue.casefold()]
    if set(index) == set(ABNORMALITY):
        return lambda record: index[ABNORMALITY[int(record.abnormal)]]
    raise DataError(
        f"MIAS labels its films by background tissue (task.classes [F, G, D]) or as normal vs abnormal "
        f"(task.classes [normal, abnormal]); the job's classes are {list(classes)}"
    )


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


@dataclass(frozen=True, eq=False)
class Film:
    """One film as its site acquired it: pixels (H, W) float32 in [0, 1], its spacing, class index and patient."""

    pixels: np.ndarray
    spacing_mm: tuple[float, float]
    label: int
    patient: str
    ref: str


@dataclass(frozen=True)
class MiasSite:
    name: str
    shift: SiteShift | None
    train: tuple[Film, ...]
    test: tuple[Film, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (film, reason)


def _capped(mine: list[MiasRecord], max_images: int, seed: int, name: str) -> list[MiasRecord]:
    """Whole patients, in seeded order, while their films stay within ``max_images``."""
    keys = _keys(sorted({r.patient for r in mine}), seed, f"{name}/cap")
    kept: set[str] = set()
    for patient in sorted(keys, key=keys.__getitem__):
        if sum(1 for r in mine if r.patient in kept | {patient}) > max_images:
            break
        kept.add(patient)
    return [r for r in mine if r.patient in kept]


def mias_sites(
    root: Path,
    *,
    classes: Sequence[str],
    n_sites: int = 3,
    seed: int = 0,
    test_fraction: float = 0.25,
    shift: bool = True,
    only: Sequence[str] = (),
    max_images: int | None = None,
    on_bad_case: str = "skip",
) -> list[MiasSite]:
    """The MIAS films at ``root`` dealt to ``n_sites`` sites (only the named ones are read), each split into training
    and test patients stratified by their labels. ``max_images`` keeps whole patients, in seeded order."""
    records = parse_info(root / INFO)
    label = labelling(classes)
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
            mine = _capped(mine, max_images, seed, name)
        acquisition = site_shift(index) if shift else None
        films: list[Film] = []
        skipped: list[tuple[str, str]] = []
        for record in mine:
            path = root / "images" / f"{record.ref}.png"
            try:
                pixels = to_channels(read_pixels(path), 1)[0]
            except DataError as exc:
                if on_bad_case == "stop":
                    raise DataError(f"{path}: {exc} (data.on_bad_case is stop)") from None
                skipped.append((record.ref, str(exc)))
                continue
            spacing = (MIAS_SPACING_MM, MIAS_SPACING_MM)
            if acquisition is not None:
                rng = np.random.default_rng([SHIFT_SEED, index, record.number])
                pixels, spacing = acquisition.apply(pixels, spacing, rng)
            films.append(Film(pixels, spacing, label(record), record.patient, record.ref))
        strata: dict[str, set[int]] = {}
        for record in mine:  # from Info.txt, so the split does not depend on which files could be read
            strata.setdefault(record.patient, set()).add(label(record))
        train, test = stratified_patient_split(
            {p: tuple(sorted(labels)) for p, labels in strata.items()}, test_fraction, seed, name
        )
        out.append(
            MiasSite(
                name,
                acquisition,
                tuple(f for f in films if f.patient in train),
                tuple(f for f in films if f.patient in test),
                tuple(skipped),
            )
        )
    return out


def _counts(films: Sequence[Film], classes: Sequence[str]) -> str:
    counts = np.bincount([f.label for f in films], minlength=len(classes))
    patients = len({f.patient for f in films})
    per_class = ", ".join(f"{name} {int(n)}" for name, n in zip(classes, counts, strict=True))
    return f"{len(films)} images of {patients} patients ({per_class})"


def _matrix(films: Sequence[Film]) -> str:
    sides = sorted({max(f.pixels.shape) for f in films})
    spacings = [f.spacing_mm[0] for f in films]
    low, high = min(spacings), max(spacings)
    return (
        f"matrix {sides[0]}" + (f"-{sides[-1]}" if len(sides) > 1 else "") + " px, "
        f"pixel spacing {low:.3g}" + (f"-{high:.3g}" if high > low else "") + " mm"
    )


def read_mias_site(config: ImageTaskConfig, classes: Sequence[str], place: Place) -> SiteData:
    """Site ``place.site`` of the MIAS folder ``place.folder``, as the job's ``mias`` settings deal it."""
    (site,) = mias_sites(
        Path(place.folder),
        classes=classes,
        n_sites=config.mias.sites,
        seed=place.seed,
        test_fraction=place.test_fraction,
        shift=config.mias.site_shift,
        only=[place.site],
        max_images=place.max_cases,
        on_bad_case=place.on_bad_case,
    )
    if not site.train or not site.test:
        raise DataError(
            f"site {site.name}: {len(site.train)} training and {len(site.test)} test images; both need at least one"
        )
    side = config.image_size

    def images(films: Sequence[Film]) -> ImageSet:
        pixels = [fit_square(to_channels(f.pixels[None], config.channels), side) for f in films]
        return ImageSet.from_arrays(pixels, [f.label for f in films], [f.ref for f in films], config.storage)

    shift = site.shift.describe() if site.shift is not None else "acquisition: as digitised (site_shift off)"
    notes = (
        "MIAS films (one centre, split by patient)",
        shift,
        f"{_matrix([*site.train, *site.test])}, resized to {side} px",
        f"train: {_counts(site.train, classes)}",
        f"test: {_counts(site.test, classes)}",
    )
    return SiteData(train=images(site.train), test=images(site.test), notes=notes, skipped=site.skipped)
