"""Privacy randomness: generators keyed from the operating system's CSPRNG, never from anything the server knows.

Every privacy mechanism (Gaussian and Laplace noise, SVT's thresholds and selections, random sparsification,
DP-SGD's noise and Poisson sampling) draws from a generator made here. Its key is 128 bits (and its starting
counter 256 bits) read from ``os.urandom`` at the site when the generator is made; the key is held in memory
only, never logged, written or sent, so no one else (the server, another site, whoever holds the job file) can
regenerate the noise and subtract it. The job's seed keeps its meaning for everything that is not privacy (data
splits, initial model, batch order and augmentation without DP), so a job without privacy stays reproducible.

The bit generator is Philox-4x64-10 (Salmon et al. 2011), a counter-based generator built from a keyed block
function with cryptographic-style rounds; keyed from the CSPRNG and re-keyed for every release it is not
predictable from anything an observer holds. Noise is drawn in double precision; the attack of Mironov (2012)
on floating-point Laplace noise is not mitigated here.

Secure aggregation's secrets (keys, masks' seeds, Shamir shares) take bytes from ``os.urandom`` directly
(:mod:`confide.privacy.secagg_math`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def secret_generator() -> np.random.Generator:
    """A fresh numpy generator keyed from the OS CSPRNG (a new key on every call)."""
    key = int.from_bytes(os.urandom(16), "little")
    counter = int.from_bytes(os.urandom(32), "little")
    return np.random.Generator(np.random.Philox(key=key, counter=counter))


def secret_normal(rng: np.random.Generator, std: float, shape: tuple[int, ...]) -> torch.Tensor:
    """Gaussian noise N(0, std^2) of ``shape`` as a float32 tensor, drawn from a secret generator."""
    import torch  # only DP-SGD, at a site, draws tensors: the server imports this module without torch

    return torch.from_numpy(rng.normal(0.0, std, size=shape).astype(np.float32))


def poisson_sample(rng: np.random.Generator, n: int, rate: float) -> torch.Tensor:
    """Indices of a Poisson sample of ``n`` items: each in independently with probability ``rate`` (DP-SGD's
    sampling, as its accountant assumes), drawn from a secret generator."""
    import torch

    return torch.from_numpy(np.flatnonzero(rng.random(n) < rate).astype(np.int64))
