"""``confide new NAME``: a folder holding a working task on the public API, its job and generated data.

The folder: ``task.py`` (a small PyTorch network on each hospital's rows, the three functions to fill in),
``job.yaml`` (that task across three hospitals with the local-only and pooled baselines), ``README.md`` and
``data/<hospital>/rows.csv`` (generated: three hospitals whose patients and prevalence differ).
"""

from __future__ import annotations

import csv
import re
from importlib import resources
from pathlib import Path

import numpy as np

from confide.errors import ConfigError

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
HOSPITALS = {"hospital-a": (180, 0.0, 0.35), "hospital-b": (130, 0.6, 0.5), "hospital-c": (90, -0.5, 0.25)}
FEATURES = 6


def _template(name: str) -> str:
    return (resources.files("confide") / "templates" / "new_task" / f"{name}.txt").read_text(encoding="utf-8")


def _rows(rng: np.random.Generator, n: int, shift: float, prevalence: float, weights: np.ndarray) -> list[list[str]]:
    """``n`` patients of one hospital: features shifted as its population is, labels from one shared rule with the
    hospital's own prevalence (the intercept that gives it)."""
    x = rng.normal(shift, 1.0, size=(n, FEATURES))
    score = x @ weights
    cut = np.quantile(score, 1.0 - prevalence)
    p = 1.0 / (1.0 + np.exp(-2.0 * (score - cut)))
    y = (rng.random(n) < p).astype(int)
    return [[f"{v:.4f}" for v in row] + [str(label)] for row, label in zip(x, y, strict=True)]


def write_data(folder: Path, seed: int = 0) -> list[str]:
    """One ``rows.csv`` per hospital under ``folder``; returns the hospitals' names."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0.0, 1.0, size=FEATURES)
    for hospital, (n, shift, prevalence) in HOSPITALS.items():
        where = folder / hospital
        where.mkdir(parents=True, exist_ok=True)
        with (where / "rows.csv").open("w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow([f"f{i + 1}" for i in range(FEATURES)] + ["label"])
            out.writerows(_rows(rng, n, shift, prevalence, weights))
    return list(HOSPITALS)


def new_task(path: Path) -> list[Path]:
    """Write the folder ``path`` (which must not exist, or be empty); returns the files written."""
    path = Path(path)
    name = path.name
    if not NAME.match(name):
        raise ConfigError(
            f"confide new: {name!r} is not a usable name (letters, digits, _ . - ; not starting with . or -)"
        )
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"confide new: {path} already exists and is not empty; choose another name")
    path.mkdir(parents=True, exist_ok=True)
    values = {"name": name, "data": f"{path.as_posix()}/data", "out": f"runs/{name}"}
    written = []
    for template, target in (("task.py", "task.py"), ("job.yaml", "job.yaml"), ("README.md", "README.md")):
        text = _template(template)
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        (path / target).write_text(text, encoding="utf-8")
        written.append(path / target)
    for hospital in write_data(path / "data"):
        written.append(path / "data" / hospital / "rows.csv")
    return written
