"""A generated survival table with a known linear risk, for tests and demos (no real patient in it).

Each site's patients have ``age`` (years), ``marker`` (a lab value), ``noise`` (no effect) and ``stage`` (I, II or
III). Their hazard is ``0.1 * exp(lp)`` with the linear predictor

    lp = 0.8 * (age - 60) / 10  -  0.6 * marker  +  {I: 0, II: 0.5, III: 1.0}[stage]

so older patients, a lower marker and a later stage die sooner. Times are exponential, censored by an independent
exponential follow-up (about a third of the patients), and rounded to 0.1 so that some times tie. Sites differ in
their mix of patients (site k is older on average and has more late stages), as hospitals do.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np

COEFFICIENTS = {"age": 0.8 / 10, "marker": -0.6, "noise": 0.0}  # per unit of each column
STAGE_EFFECTS = {"I": 0.0, "II": 0.5, "III": 1.0}
HEADER = ("patient", "site", "age", "marker", "noise", "stage", "time", "event")


def synthetic_survival(sites: int | Sequence[str] = 3, rows: int = 200, seed: int = 0, *, missing: float = 0.0) -> str:
    """The table as CSV text: ``rows`` patients per site (``sites`` names, or a count: ``site-1``, ...), columns
    :data:`HEADER`. ``missing`` blanks that share of the age, marker and stage cells at random."""
    names = [f"site-{k + 1}" for k in range(sites)] if isinstance(sites, int) else list(sites)
    if not names or rows < 1 or not 0 <= missing < 1:
        raise ValueError(f"need at least one site, one row and 0 <= missing < 1, got {names}, {rows}, {missing}")
    rng = np.random.default_rng(seed)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    patient = 0
    for k, site in enumerate(names):
        age = rng.normal(55 + 3 * k, 10, rows)
        marker = rng.normal(0.2 * k, 1.0, rows)
        noise = rng.normal(0, 1, rows)
        late = min(0.2 + 0.1 * k, 0.6)
        stage = rng.choice(list(STAGE_EFFECTS), size=rows, p=[1 - late - 0.3, 0.3, late])
        lp = (
            COEFFICIENTS["age"] * (age - 60)
            + COEFFICIENTS["marker"] * marker
            + np.array([STAGE_EFFECTS[s] for s in stage])
        )
        event_time = rng.exponential(1.0 / (0.1 * np.exp(lp)))
        follow_up = rng.exponential(20.0, rows)
        time = np.maximum(np.round(np.minimum(event_time, follow_up), 1), 0.1)
        event = (event_time <= follow_up).astype(int)
        for i in range(rows):
            patient += 1
            cells = [f"{age[i]:.1f}", f"{marker[i]:.3f}", f"{noise[i]:.3f}", str(stage[i])]
            blank = rng.random(4) < missing
            blank[2] = False  # the noise column stays complete
            cells = ["" if b else c for b, c in zip(blank, cells, strict=True)]
            writer.writerow([f"p{patient:05d}", site, *cells, f"{time[i]:.1f}", int(event[i])])
    return out.getvalue()
