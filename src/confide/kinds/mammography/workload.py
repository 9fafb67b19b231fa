"""The mammography workload: breast density (or abnormal vs normal) from 2D mammograms.

Two layouts of ``data.root``:

- MIAS mode, when ``root/Info.txt`` exists: the mini-MIAS films dealt by patient to ``split_sites`` simulated sites
  (``mias-1``, ``mias-2``, ...), each with its own simulated acquisition when ``site_shift`` is on
  (:mod:`confide.kinds.mammography.mias`). A deployed site given the MIAS folder re-derives the partition from
  the job's seed and reads only its own films.
- Folder mode, otherwise: one sub-folder per site, each holding ``labels.csv`` (``file,label[,patient]``) and its
  DICOM / PNG / PGM images (:func:`confide.kinds.mammography.reading.read_labelled_folder`). A deployed site's
  root is its own folder. Training and test are split by patient (each image its own patient without the column),
  stratified by label, seeded by the job's seed and the site's name, so simulation and deployment agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from confide.errors import DataError
from confide.kinds.mammography.config import MammoTaskConfig
from confide.kinds.mammography.density import ImageData, MammoTask, build_classifier, classifier_initial, score_keys
from confide.kinds.mammography.mias import MiasSite, mias_sites, stratified_patient_split
from confide.kinds.mammography.reading import MammoCase, read_labelled_folder
from confide.privacy.config import DpSgdSpec
from confide.records import Arrays
from confide.tasks.local_rules import norm_state_names
from confide.workloads.base import Progress, SiteSplit, Skipped


def _counts(cases: Sequence[MammoCase], classes: Sequence[str]) -> str:
    counts = np.bincount([c.label for c in cases], minlength=len(classes))
    patients = len({c.patient for c in cases})
    return (
        f"{len(cases)} images of {patients} patients ("
        + ", ".join(f"{name} {int(n)}" for name, n in zip(classes, counts, strict=True))
        + ")"
    )


def _spacing(cases: Sequence[MammoCase]) -> str:
    known = [c.image.spacing_mm[0] for c in cases if c.image.spacing_mm is not None]
    sides = sorted({max(c.image.pixels.shape) for c in cases})
    text = f"matrix {sides[0]}" + (f"-{sides[-1]}" if len(sides) > 1 else "") + " px"
    if known:
        low, high = min(known), max(known)
        text += f", pixel spacing {low:.3g}" + (f"-{high:.3g}" if high > low else "") + " mm"
    if len(known) < len(cases):
        text += f" ({len(cases) - len(known)} images without spacing)"
    return text


class MammoWorkload:
    def __init__(self, config: MammoTaskConfig) -> None:
        self.config = config
        self.metric_keys: tuple[str, ...] = score_keys(config)
        self.metric: str = self.metric_keys[0]

    # -- data -------------------------------------------------------------------------------------------------------

    def _split(
        self,
        name: str,
        train: Sequence[MammoCase],
        test: Sequence[MammoCase],
        skipped: Sequence[Skipped],
        notes: Sequence[str],
    ) -> SiteSplit:
        if not train or not test:
            raise DataError(f"site {name}: {len(train)} training and {len(test)} test images; both need at least one")
        side, classes = self.config.image_size, self.config.classes
        return SiteSplit(
            name=name,
            train=ImageData.from_cases(train, side),
            test=ImageData.from_cases(test, side),
            skipped=tuple(skipped),
            notes=(
                *notes,
                f"{_spacing([*train, *test])}, resized to {side} px",
                f"train: {_counts(train, classes)}",
                f"test: {_counts(test, classes)}",
            ),
        )

    def _from_mias(self, site: MiasSite) -> SiteSplit:
        shift = site.shift.describe() if site.shift is not None else "acquisition: as digitised (site_shift off)"
        return self._split(
            site.name, site.train, site.test, site.skipped, ("MIAS films (one centre, split by patient)", shift)
        )

    def _mias(self, data: Any, seed: int, root: Path, only: Sequence[str]) -> list[SiteSplit]:
        if self.config.target not in ("density", "abnormal"):
            raise DataError(
                f"MIAS at {root} has density (F/G/D) and abnormality labels, not target {self.config.target!r}"
            )
        sites = mias_sites(
            root,
            target=self.config.target,
            n_sites=self.config.split_sites,
            seed=seed,
            test_fraction=float(data.test_fraction),
            shift=self.config.site_shift,
            only=only,
            max_images=data.max_cases_per_site,
            on_bad_case=data.on_bad_case,
        )
        return [self._from_mias(site) for site in sites]

    def _folder(self, data: Any, seed: int, folder: Path, name: str) -> SiteSplit:
        cases, skipped = read_labelled_folder(folder, self.config.classes, on_bad_case=data.on_bad_case)
        if not cases:
            raise DataError(f"site {name}: no readable images in {folder}")
        strata: dict[str, set[int]] = {}
        for case in cases:
            strata.setdefault(case.patient, set()).add(case.label)
        if data.max_cases_per_site is not None:
            order = sorted(strata, key=lambda p: (_patient_key(seed, name, p), p))
            kept: set[str] = set()
            total = 0
            for patient in order:
                size = sum(1 for c in cases if c.patient == patient)
                if total + size > data.max_cases_per_site:
                    break
                kept.add(patient)
                total += size
            cases = [c for c in cases if c.patient in kept]
            strata = {p: v for p, v in strata.items() if p in kept}
        train_ids, test_ids = stratified_patient_split(
            {p: tuple(sorted(v)) for p, v in strata.items()}, float(data.test_fraction), seed, name
        )
        return self._split(
            name,
            [c for c in cases if c.patient in train_ids],
            [c for c in cases if c.patient in test_ids],
            skipped,
            (f"images from {folder} (acquisition as the site's files hold it)",),
        )

    def load_sites(self, data: Any, seed: int, progress: Progress) -> list[SiteSplit]:
        root = Path(data.root)
        wanted = list(data.sites)
        if (root / "Info.txt").is_file():
            splits = self._mias(data, seed, root, wanted)
        else:
            if not root.is_dir():
                raise DataError(f"data folder {root} does not exist")
            if wanted:
                missing = [n for n in wanted if not (root / n).is_dir()]
                if missing:
                    raise DataError(f"site folder(s) {missing} not found under {root}")
                folders = [root / n for n in wanted]
            else:
                folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            if not folders:
                raise DataError(f"no site folders under {root}: expected <site>/{'labels.csv'} and its images")
            splits = []
            for folder in folders:
                splits.append(self._folder(data, seed, folder, folder.name))
                progress(f"{folder.name}: {len(splits[-1].train)} training, {len(splits[-1].test)} test images")
            return splits
        for split in splits:
            progress(f"{split.name}: {len(split.train)} training, {len(split.test)} test images")
        return splits

    def load_site(self, data: Any, seed: int, root: Path, name: str) -> SiteSplit:
        if (root / "Info.txt").is_file():
            return self._mias(data, seed, root, [name])[0]
        return self._folder(data, seed, root, name)

    def pool(self, parts: Sequence[Any]) -> Any:
        return ImageData.concat(list(parts))

    def size(self, split: Any) -> int:
        return len(split)

    # -- model ------------------------------------------------------------------------------------------------------

    def task(self, train: Any, test: Any, *, site: str, seed: int, dp_sgd: DpSgdSpec | None) -> MammoTask:
        return MammoTask(self.config, train, test, site=site, seed=seed, dp_sgd=dp_sgd)

    def initial(self, seed: int) -> Arrays:
        return classifier_initial(self.config, seed)

    def norm_names(self) -> frozenset[str]:
        return norm_state_names(build_classifier(self.config))

    def batch_size(self) -> int:
        return self.config.batch_size

    def lr(self) -> float:
        return self.config.lr

    def describe(self) -> str:
        c = self.config
        target = {
            "density": "breast density (F/G/D)",
            "birads": "BI-RADS density (A-D)",
            "abnormal": "abnormal vs normal",
        }
        return (
            f"mammogram classification: {target[c.target]}, CNN of {c.blocks} blocks (width {c.width}, {c.norm} norm), "
            f"images {c.image_size} px"
        )


def _patient_key(seed: int, site: str, patient: str) -> float:
    """A seeded pseudo-random key of a patient (the order in which ``max_cases_per_site`` keeps patients)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, *f"{site}/cap/{patient}".encode()]))
    return float(rng.random())
