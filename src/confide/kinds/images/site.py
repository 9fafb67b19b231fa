"""One site's images (``read_site``): its ``labels.csv``, the images it names, split into train and test.

The split is the file's ``split`` column when it has one (``val`` images set aside: the task has no step that would
use them), else a seeded split stratified by label that keeps each patient's images on one side
(:func:`confide.api.split_indices`; without a patient column each image is its own patient). An image that cannot
be used (missing, unreadable, outside the site folder) and an image file that ``labels.csv`` does not list are
returned in ``SiteData.skipped`` with the reason (or, under ``data.on_bad_case: stop``, stop the job naming it); a
site left with no readable image is an error naming the folder and the first reasons. ``data.max_cases_per_site``
reads only the first images listed (train and test; val rows are never read).

A folder holding ``Info.txt`` is the mini-MIAS set instead, its patients dealt to simulated sites
(:mod:`confide.kinds.images.mias`). Either way, under ``class_weighted`` each training image carries the inverse
frequency of its class among the site's training images as its loss weight.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from confide.api import Place, SiteData, split_indices
from confide.errors import ConfigError, DataError
from confide.kinds.images.config import ImageTaskConfig
from confide.kinds.images.dataset import ImageSet, inverse_frequency
from confide.kinds.images.labels import LABELS_FILE, LabelRow, class_indices, read_labels
from confide.kinds.images.mias import is_mias, read_mias_site, site_names
from confide.kinds.images.pixels import DICOM_SUFFIXES, RASTER_SUFFIXES, load_image
from confide.tasks.loop import seed_of

REASONS_SHOWN = 3


def require_classes(config: ImageTaskConfig, where: str) -> tuple[str, ...]:
    """The job's classes, or a :class:`ConfigError` saying why they are needed ``where``."""
    if config.classes is None:
        raise ConfigError(
            f"task.classes is not set: {where} needs the label vocabulary from the job (a simulation reads it from "
            "the sites' labels.csv and prints it); add it to the task, in order, e.g. classes: [benign, malignant]"
        )
    return config.classes


def _inside(folder: Path, name: str) -> Path | None:
    path = folder / name
    if Path(name).is_absolute() or not path.resolve().is_relative_to(folder.resolve()):
        return None
    return path


def _read_images(
    config: ImageTaskConfig, place: Place, rows: list[LabelRow]
) -> tuple[list[np.ndarray], list[int], list[tuple[str, str]]]:
    """The images of ``rows`` that can be used (and which rows they are), and why each other one cannot."""
    folder = Path(place.folder)
    images: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    for k, row in enumerate(rows):
        path = _inside(folder, row.file)
        reason = None
        if path is None:
            reason = f"line {row.line}: the path leaves the site folder"
        elif not path.is_file():
            reason = f"line {row.line}: listed in {LABELS_FILE} but not found"
        else:
            try:
                images.append(load_image(path, config.channels, config.image_size))
                kept.append(k)
            except DataError as exc:
                reason = str(exc)
        if reason is not None:
            if place.on_bad_case == "stop":
                raise DataError(f"site {place.site}: {folder / row.file}: {reason} (data.on_bad_case is stop)")
            skipped.append((row.file, reason))
        if k % 100 == 99:
            place.progress(f"{place.site}: {k + 1} of {len(rows)} images read")
    return images, kept, skipped


def _unlisted(folder: Path, rows: tuple[LabelRow, ...]) -> list[tuple[str, str]]:
    listed = {os.path.normpath(row.file) for row in rows}
    suffixes = RASTER_SUFFIXES | (DICOM_SUFFIXES - {""})
    return [
        (entry.name, f"an image file not listed in {LABELS_FILE}")
        for entry in sorted(folder.iterdir())
        if entry.is_file()
        and not entry.name.startswith(".")
        and entry.suffix.lower() in suffixes
        and entry.name not in listed
    ]


def _split(rows: list[LabelRow], labels: np.ndarray, given: bool, place: Place) -> tuple[np.ndarray, np.ndarray, str]:
    """(train indices, test indices, how the split was made) over ``rows``."""
    if given:
        train = np.array([i for i, r in enumerate(rows) if r.split == "train"], dtype=np.int64)
        test = np.array([i for i, r in enumerate(rows) if r.split == "test"], dtype=np.int64)
        if train.size == 0:
            raise DataError(
                f"site {place.site}: the split column of {place.folder / LABELS_FILE} marks none of its "
                f"{len(rows)} readable images train; every site needs training images"
            )
        return train, test, f"as given in {LABELS_FILE}"
    if len(rows) < 2:
        raise DataError(f"site {place.site}: {len(rows)} readable image(s) in {place.folder}; a split needs two")
    groups = [r.patient or f"file:{r.file}" for r in rows]
    split = split_indices(
        len(rows),
        place.test_fraction,
        seed_of(place.seed, place.site, "split"),
        labels=labels.tolist(),
        groups=groups,
    )
    patients = len(set(groups))
    by = f"by patient ({patients} patients)" if any(r.patient for r in rows) else "by image (no patient column)"
    return split.train, split.test, f"seeded, stratified by label, {by}, test fraction {place.test_fraction:g}"


def _counts(labels: np.ndarray, classes: tuple[str, ...]) -> str:
    counts = np.bincount(labels, minlength=len(classes))
    return ", ".join(f"{name} {int(c)}" for name, c in zip(classes, counts, strict=True))


def sites(config: ImageTaskConfig, root: Path) -> list[str]:
    """The sites of a simulation's ``data.root``: MIAS's simulated sites, else its sub-folders."""
    root = Path(root)
    if is_mias(root):
        return site_names(config.mias.sites)
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder (it should hold one folder per site with {LABELS_FILE})")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_site(config: ImageTaskConfig, place: Place) -> SiteData:
    """One site's images split into train and test, its training images weighted under ``class_weighted`` (see the
    module docstring)."""
    classes = require_classes(config, f"site {place.site}")
    data = read_mias_site(config, classes, place) if is_mias(place.folder) else _read_folder(config, classes, place)
    if not config.class_weighted:
        return data
    train = data.train
    if not isinstance(train, ImageSet):
        raise DataError(f"site {place.site}: training images of type {type(train).__name__}, not an ImageSet")
    per_class = inverse_frequency(train.labels.numpy(), len(classes))
    counts = train.counts(len(classes))
    shown = ", ".join(f"{name} {w:.3g}" for name, w, n in zip(classes, per_class, counts, strict=True) if n)
    return replace(
        data,
        train=train.with_class_weights(len(classes)),
        notes=(*data.notes, f"training loss weighted by inverse class frequency: {shown}"),
    )


def _read_folder(config: ImageTaskConfig, classes: tuple[str, ...], place: Place) -> SiteData:
    """A site folder's labels.csv and images, split as given or by patient."""
    folder = Path(place.folder)
    if not folder.is_dir():
        raise DataError(f"site {place.site}: {folder} is not a folder (it should hold {LABELS_FILE} and the images)")
    table = read_labels(folder)
    indices = class_indices(table, classes)
    wanted = [k for k, row in enumerate(table.rows) if row.split != "val"]
    listed = len(wanted)
    if place.max_cases is not None:
        wanted = wanted[: place.max_cases]
    rows = [table.rows[k] for k in wanted]
    images, kept, skipped = _read_images(config, place, rows)
    skipped += _unlisted(folder, table.rows)
    if not kept:
        reasons = "; ".join(f"{item}: {why}" for item, why in skipped[:REASONS_SHOWN]) or "it lists no image"
        raise DataError(
            f"site {place.site}: no readable image in {folder} ({len(rows)} listed in {LABELS_FILE} for train and "
            f"test); first reasons: {reasons}"
        )
    rows = [rows[k] for k in kept]
    labels = indices[[wanted[k] for k in kept]]
    train, test, how = _split(rows, labels, table.has_split, place)

    def subset(idx: np.ndarray) -> ImageSet:
        return ImageSet.from_arrays(
            [images[i] for i in idx], labels[idx].tolist(), [rows[i].file for i in idx], config.storage
        )

    notes = [
        f"split {how}",
        f"training images per class: {_counts(labels[train], classes)}",
    ]
    if test.size:
        notes.append(f"test images per class: {_counts(labels[test], classes)}")
    if len(wanted) < listed:
        notes.append(f"read the first {len(wanted)} of {listed} listed images (data.max_cases_per_site)")
    set_aside = len(table.rows) - listed
    if set_aside:
        notes.append(f"{set_aside} val images set aside (the task has no step that uses them)")
    if table.has_split:
        both = {r.patient for r in (rows[i] for i in train) if r.patient} & {
            r.patient for r in (rows[i] for i in test) if r.patient
        }
        if both:
            notes.append(f"{len(both)} patients have images in both train and test (the given split is kept)")
    if config.classes_read_from_data:
        notes.append(f"classes read from the sites' {LABELS_FILE}: {list(classes)} (fix them in the job: task.classes)")
    if skipped:
        notes.append(f"{len(skipped)} files skipped (listed with their reasons)")
    return SiteData(
        train=subset(train),
        test=subset(test) if test.size else None,
        notes=tuple(notes),
        skipped=tuple(skipped),
    )
