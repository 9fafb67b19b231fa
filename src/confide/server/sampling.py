"""Which connected sites train in a round, when a job trains a fraction of them (``federation.fraction``).

The sample is drawn from the job's seed and the round's number alone (not from the order sites joined, nor from
earlier rounds), so the same job samples the same sites in simulation, on either engine, and after a resume.
That makes it reproducible and, for the same reason, no secret: it is not privacy randomness (DESIGN.md, rule 6),
and no privacy accounting may treat it as one. Each sampled site is told the rate (:data:`RATE_KEY` in its
instruction's config); its ledger records the rate and claims no amplification from it (see ``site/runner.py``).

Why no amplification by subsampling, anywhere:

- with noise added at the sites (local or distributed DP), the server is the adversary, and it chose the sample
  and sees who answered: against it, a sampled site's release costs what it costs unsampled;
- with central noise (``placement: server``, a server the site's policy trusts), subsampling could amplify only
  against those who see the released models alone, and only if they cannot know the sample: this one follows from
  the job's seed, which every site and the job's author know; the strategy (DP-FedAvg) keeps no accountant of its
  own, and the sites' ledgers, which do the accounting, would have to take the server's word for the rate and for
  the sampling having been random, which a site never does (DESIGN.md rule 7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from confide.errors import ConfigError

RATE_KEY = "site_sampling_rate"
"""The key of an instruction's config that tells a sampled site the round's sampling rate."""

STREAM = 0x5A4D504C  # keeps the sample's generator apart from every other use of the job's seed


def check_fraction(fraction: float) -> float:
    """``fraction`` as a float in (0, 1], or a ConfigError naming ``federation.fraction``."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ConfigError(f"federation.fraction must be a number in (0, 1], got {fraction!r}")
    return float(fraction)


def sample_size(connected: int, fraction: float, minimum: int) -> int:
    """How many of ``connected`` sites train: ``fraction`` of them rounded down, at least ``minimum`` (the quorum)
    and 1, at most all of them."""
    wanted = math.floor(check_fraction(fraction) * connected + 1e-9)  # 0.1 * 1000 is 100.00000000000001
    return min(connected, max(wanted, minimum, 1))


def sample_sites(sites: Sequence[str], fraction: float, minimum: int, *, seed: int, round: int) -> list[str]:
    """The round's sample of ``sites``, drawn without replacement from the job's ``seed`` and ``round``, in the
    sorted order of their names. With ``fraction`` 1 every site trains, in the order given."""
    if check_fraction(fraction) == 1.0:
        return list(sites)
    names = sorted(sites)
    size = sample_size(len(names), fraction, minimum)
    rng = np.random.default_rng([STREAM, seed, round])
    chosen = rng.choice(len(names), size=size, replace=False)
    return [names[i] for i in sorted(int(i) for i in chosen)]
