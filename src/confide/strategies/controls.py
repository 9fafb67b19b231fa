"""SCAFFOLD's control variates beside a model's arrays: names, and splitting them off (numpy only, so the server
needs no torch for them).

The server's control variate ``c`` travels in the global arrays under ``scaffold.c/<array>``; a site's control
change comes back under the same names (see :mod:`confide.tasks.local_rules`).
"""

from __future__ import annotations

import numpy as np

from confide.records import Arrays

CONTROL_PREFIX = "scaffold.c/"


def split_controls(arrays: Arrays) -> tuple[Arrays, dict[str, np.ndarray]]:
    """(the model's arrays, the SCAFFOLD control variate by model array name) of an instruction."""
    model = {name: value for name, value in arrays.items() if not name.startswith(CONTROL_PREFIX)}
    controls = {name[len(CONTROL_PREFIX) :]: value for name, value in arrays.items() if name.startswith(CONTROL_PREFIX)}
    return Arrays.from_dict(model), controls


def with_controls(arrays: Arrays) -> Arrays:
    """A global model with a zero SCAFFOLD control variate for every floating-point array."""
    out = dict(arrays.items())
    for name, value in arrays.items():
        if np.issubdtype(value.dtype, np.floating):
            out[CONTROL_PREFIX + name] = np.zeros_like(value)
    return Arrays.from_dict(out)


def model_part(arrays: Arrays) -> Arrays:
    """The model alone, without any control variate."""
    return split_controls(arrays)[0] if any(n.startswith(CONTROL_PREFIX) for n in arrays.names()) else arrays
