"""A federation's data on disk: one folder of BraTS cases per site, split into training and test cases.

In a real deployment each site reads only its own folder; the simulator reads all of them from
one parent folder. Cases that cannot be used are skipped and reported, never fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from confide.errors import CaseError, DataError
from confide.kinds.brain_tumor.brats import CaseProblem, discover_cases
from confide.kinds.brain_tumor.preprocess import PreparedCase, PreprocessConfig, prepare_case


@dataclass(frozen=True)
class SiteCases:
    name: str
    train: tuple[PreparedCase, ...]
    test: tuple[PreparedCase, ...]
    problems: tuple[CaseProblem, ...]


def site_folders(root: Path, names: Sequence[str] = ()) -> list[Path]:
    """The site folders under ``root``: the named ones (each must exist) or every sub-folder."""
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    if names:
        missing = [n for n in names if not (root / n).is_dir()]
        if missing:
            raise DataError(f"site folder(s) {missing} not found under {root}")
        return [root / n for n in names]
    found = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"no site folders under {root}: expected one sub-folder of cases per site")
    return found


def split_cases(case_ids: Sequence[str], test_fraction: float, seed: int, site: str) -> tuple[set[str], set[str]]:
    """A deterministic train/test split of one site's cases (at least one case on each side)."""
    if len(case_ids) < 2:
        raise DataError(f"site {site} has {len(case_ids)} usable case(s); at least 2 are needed to train and test")
    order = sorted(case_ids)
    rng = np.random.default_rng(np.random.SeedSequence([seed, *site.encode()]))
    rng.shuffle(order)
    n_test = min(max(1, round(test_fraction * len(order))), len(order) - 1)
    return set(order[n_test:]), set(order[:n_test])


def load_site(
    folder: Path,
    config: PreprocessConfig,
    *,
    test_fraction: float,
    seed: int,
    max_cases: int | None = None,
    on_bad_case: Literal["skip", "stop"] = "skip",
    on_case: Callable[[str, str], None] | None = None,
) -> SiteCases:
    """Discover, prepare and split one site's cases. Unusable cases are skipped and listed, or stop the
    job with a :class:`CaseError` naming the case when ``on_bad_case`` is ``"stop"``."""
    cases, problems = discover_cases(folder, require_seg=True, on_problem="skip" if on_bad_case == "skip" else "raise")
    if max_cases is not None:
        cases = cases[:max_cases]
    prepared: list[PreparedCase] = []
    skipped = list(problems)
    for case in cases:
        try:
            prepared.append(prepare_case(case, config))
        except CaseError as exc:
            if on_bad_case == "stop":
                raise
            skipped.append(CaseProblem(case_id=case.case_id, folder=case.folder, reason=exc.reason))
        if on_case is not None:
            on_case(folder.name, case.case_id)
    train_ids, test_ids = split_cases([c.case_id for c in prepared], test_fraction, seed, folder.name)
    return SiteCases(
        name=folder.name,
        train=tuple(c for c in prepared if c.case_id in train_ids),
        test=tuple(c for c in prepared if c.case_id in test_ids),
        problems=tuple(skipped),
    )
