"""The histopathology workload: slides as bags of tile features (one folder per site), classified with
attention or top-k multiple-instance learning (see :mod:`confide.tasks.mil`).

Headline metric: balanced accuracy. Sites differ in their share of positive slides (by design in the generated
data, by case mix in real hospitals), so plain accuracy rewards predicting the majority class; balanced accuracy
(the mean recall over the classes) does not, it scores the decision the model actually makes, and it is defined on
every test split. The AUC (binary tasks) is reported beside it, but a site's small test split may hold one class
only, and then its AUC is undefined (NaN).

The model's input size is the tile feature dimension. It is ``task.dim`` when set, else
``task.synthetic.dim`` until slides are read, and then the dimension most slides share.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from confide.data.slides import SlideSet, SlideSite, common_dim, keep_dim, read_site, split_by_patient
from confide.data.slides import write_synthetic_slides as _write_synthetic
from confide.errors import ConfigError, DataError
from confide.privacy.config import DpSgdSpec
from confide.records import Arrays
from confide.tasks.mil import MilTask, mil_initial, mil_norm_names
from confide.tasks.mil_config import MilTaskConfig
from confide.workloads.base import Progress, SiteSplit


def slide_site_folders(root: Path, names: Sequence[str] = ()) -> list[Path]:
    """The named site folders under ``root`` (each must exist), or every sub-folder holding a ``labels.csv``."""
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    if names:
        missing = [n for n in names if not (root / n / "labels.csv").is_file()]
        if missing:
            raise DataError(f"site folder(s) {missing} with a labels.csv not found under {root}")
        return [root / n for n in names]
    found = sorted(p for p in root.iterdir() if (p / "labels.csv").is_file() and not p.name.startswith("."))
    if not found:
        raise DataError(f"no site folders under {root}: expected <site>/labels.csv and <site>/features/")
    return found


def _notes(site: SlideSite, dim: int, classes: int) -> tuple[str, ...]:
    labels = np.array([bag.label for bag in site.bags])
    counts = ", ".join(f"class {c}: {int((labels == c).sum())}" for c in range(classes))
    tiles = np.mean([len(bag) for bag in site.bags]) if site.bags else 0.0
    patients = len({bag.patient for bag in site.bags})
    return (
        f"{len(site.bags)} slides of {patients} patients ({counts}), {tiles:.0f} tiles per slide on average, "
        f"feature dimension {dim}",
    )


class MilWorkload:
    metric = "balanced_accuracy"

    def __init__(self, config: MilTaskConfig) -> None:
        self.config = config
        self.metric_keys: tuple[str, ...] = (
            ("balanced_accuracy", "auc", "accuracy") if config.classes == 2 else ("balanced_accuracy", "accuracy")
        )
        self.dim: int | None = config.dim or (config.synthetic.dim if config.synthetic is not None else None)

    def _read(self, folder: Path, data: Any, seed: int, name: str, progress: Progress | None) -> SlideSite:
        return read_site(
            folder,
            name=name,
            classes=self.config.classes,
            max_slides=data.max_cases_per_site,
            seed=seed,
            on_bad_case=data.on_bad_case,
            on_slide=None if progress is None else (lambda site, slide: progress(f"{site} {slide}")),
        )

    def _split(self, site: SlideSite, data: Any, seed: int, dim: int) -> SiteSplit:
        train, test = split_by_patient(site.bags, data.test_fraction, seed, site.name)
        return SiteSplit(site.name, train, test, site.skipped, _notes(site, dim, self.config.classes))

    def _settle_dim(self, sites: list[SlideSite], on_bad_case: Any) -> tuple[list[SlideSite], int]:
        dim = self.config.dim or common_dim(sites)
        self.dim = dim
        return [keep_dim(site, dim, on_bad_case) for site in sites], dim

    def load_sites(self, data: Any, seed: int, progress: Progress) -> list[SiteSplit]:
        spec = self.config.synthetic
        if spec is not None and not Path(data.root).exists():
            _write_synthetic(
                Path(data.root),
                spec.sites,
                spec.slides,
                spec.tiles,
                spec.dim,
                seed,
                fmt=spec.format,
                on_slide=lambda site, slide: progress(f"generating {site} {slide}"),
            )
        folders = slide_site_folders(Path(data.root), data.sites)
        sites, dim = self._settle_dim([self._read(f, data, seed, f.name, progress) for f in folders], data.on_bad_case)
        return [self._split(site, data, seed, dim) for site in sites]

    def load_site(self, data: Any, seed: int, root: Path, name: str) -> SiteSplit:
        (site,), dim = self._settle_dim([self._read(root, data, seed, name, None)], data.on_bad_case)
        return self._split(site, data, seed, dim)

    def pool(self, parts: Sequence[Any]) -> SlideSet:
        return SlideSet.concat(list(parts))

    def size(self, split: Any) -> int:
        return len(split)

    def _need_dim(self) -> int:
        if self.dim is None:
            raise ConfigError(
                "task.dim: the MIL model's input size is the tile feature dimension, learnt when the slides are read; "
                "none were read yet (a deployment's server reads none): set task.dim in the job file"
            )
        return self.dim

    def task(self, train: Any, test: Any, *, site: str, seed: int, dp_sgd: DpSgdSpec | None) -> MilTask:
        return MilTask(self.config, train, test, site=site, dim=self._need_dim(), seed=seed, dp_sgd=dp_sgd)

    def initial(self, seed: int) -> Arrays:
        return mil_initial(self.config, self._need_dim(), seed)

    def norm_names(self) -> frozenset[str]:
        return mil_norm_names(self.config, self.dim or 1)  # the names do not depend on the dimension

    def batch_size(self) -> int:
        return self.config.batch_size

    def lr(self) -> float:
        return self.config.lr

    def describe(self) -> str:
        c = self.config
        dim = self.dim if self.dim is not None else "read from the slides"
        return (
            f"slide classification from tile features (MIL, {c.pooling} pooling, hidden {c.hidden}, "
            f"{c.norm} norm), feature dimension {dim}, {c.classes} classes"
        )
