"""A generated clinical table with a binary outcome, for tests and the privacy audit (no patient in it).

Columns: ``site``, numeric features ``x1 .. xd`` (standard normal, mildly correlated through a shared factor) and
``y``, drawn from a logistic model whose weights fall off as 1, 1/2, 1/3, ... so that some features matter and
some barely do.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np


def synthetic_binary_table(sites: Sequence[str], rows: int, features: int, seed: int) -> str:
    """The table as CSV text: ``rows`` patients for each of ``sites``, ``features`` numeric columns and ``y``."""
    if not sites or rows < 2 or features < 1:
        raise ValueError(f"need sites, at least 2 rows and 1 feature, got {list(sites)}, {rows}, {features}")
    rng = np.random.default_rng(seed)
    weights = np.array([(-1) ** j / (j + 1) for j in range(features)]) * 1.5
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("site", *(f"x{j + 1}" for j in range(features)), "y"))
    for site in sites:
        shared = rng.normal(size=(rows, 1))
        x = 0.8 * rng.normal(size=(rows, features)) + 0.6 * shared
        chance = 1.0 / (1.0 + np.exp(-(x @ weights)))
        y = (rng.random(rows) < chance).astype(int)
        for row, label in zip(x, y, strict=True):
            writer.writerow((site, *(f"{v:.4f}" for v in row), int(label)))
    return out.getvalue()
