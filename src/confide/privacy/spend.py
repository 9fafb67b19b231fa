"""What one release of a privacy mechanism costs, in the terms the ledger composes.

A mechanism reports its spend before it runs, so that a site can refuse a round whose spend would exceed its
budget. Two kinds of cost compose differently in the ledger:

- ``epsilon``: a pure epsilon-DP mechanism (Laplace, the sparse vector technique); composed by summation.
- ``noise_multiplier`` (with ``sampling_rate`` and ``steps``): the Gaussian mechanism, its noise standard deviation
  over its L2 sensitivity; composed with the Renyi-DP accountant of ``dp-accounting``, which is far tighter than
  summing per-round epsilons.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class Spend:
    mechanism: str
    params: Mapping[str, float | int | str] = field(default_factory=dict)
    epsilon: float = 0.0
    noise_multiplier: float = 0.0
    sampling_rate: float = 1.0
    steps: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        if not math.isfinite(self.epsilon) or self.epsilon < 0:
            raise ValueError(f"{self.mechanism}: epsilon must be finite and >= 0, got {self.epsilon}")
        if self.steps < 0 or (self.steps and not self.noise_multiplier > 0):
            raise ValueError(f"{self.mechanism}: a Gaussian spend needs steps >= 1 and a noise multiplier > 0")
        if not 0 < self.sampling_rate <= 1:
            raise ValueError(f"{self.mechanism}: sampling rate must be in (0, 1], got {self.sampling_rate}")

    @property
    def is_gaussian(self) -> bool:
        return self.steps > 0
