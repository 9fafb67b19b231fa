"""One job set-up for both ways of running it: the strategy, each site's privacy, filter chain and ledger, and the
server loop's settings, from a job. The simulator (:mod:`confide.experiment`) and the deployment
(:mod:`confide.deploy`) both build from here, so the same job gets the same noise sizing, deadlines, norm bound,
weight caps and federated evaluation in both.

What still differs, and why:

- **Whose policy.** A deployed site runs the job made stricter by the policy in its own kit
  (:func:`deployed_privacy`); in a simulation every site is the job's operator, so the job is every site's policy,
  with the job's quorum as the fewest contributors to a noisy sum (:func:`simulated_privacy`).
- **Retries and checkpoints.** A deployed round that misses its quorum waits for sites and is tried again, and every
  round is checkpointed; a simulated site that failed would fail again, and a simulation restarts from the start.
- **Secure aggregation's revocation list** comes from the server's kit, or from the simulator's in-memory CA.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from confide import serde
from confide.config import JobConfig
from confide.errors import ConfideError, ConfigError
from confide.privacy.config import PrivacyConfig, job_as_policy, stricter
from confide.records import Arrays
from confide.server.guard import guard_config
from confide.server.loop import LoopConfig
from confide.server.secure_round import SecureSettings
from confide.strategies import Strategy, make_strategy
from confide.strategies.controls import with_controls
from confide.strategies.fedopt import server_lr_for


def build_strategy(
    job: JobConfig,
    *,
    kind: str = "federated",
    sites: int,
    batch: int,
    norm_names: Callable[[], frozenset[str]],
) -> Strategy:
    """The job's strategy. A baseline (``kind`` local or pooled) trains alone and takes its update as it is (FedAvg
    of one site), not through a server optimiser or privacy. ``norm_names`` gives the model's normalisation arrays;
    it is called (building the model) only under FedBN."""
    privacy = job.privacy if kind == "federated" else PrivacyConfig()
    fed = job.federation
    norms = norm_names() if fed.strategy == "fedbn" else frozenset()
    if fed.strategy == "fedbn" and kind == "federated" and not norms:
        raise ConfigError(
            f"federation.strategy fedbn keeps normalisation layers at the sites, but the model of task "
            f"{job.task.name!r} has none: choose a model with them (for example norm: batch) or another strategy"
        )
    return make_strategy(
        fed.strategy if kind == "federated" else "fedavg",
        job.train_config(batch_size=batch),
        trim_fraction=fed.trim_fraction,
        server_lr=server_lr_for(fed.strategy, fed.server_lr),
        beta1=fed.beta1,
        beta2=fed.beta2,
        tau=fed.tau,
        mu=fed.proximal_mu,
        privacy=privacy,
        seed=job.seed,
        total_sites=sites,
        norm_names=norms,
    )


def start_model(job: JobConfig, workload: Any) -> Arrays:
    """The model every run of the job starts from: the job's ``initial_model`` file when it gives one (read
    without torch; ``workload`` may then be None), else the workload's untrained model for the job's seed."""
    if job.initial_model is None:
        model: Arrays = workload.initial(job.seed)
        return model
    path = Path(job.initial_model)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"initial_model {path} cannot be read: {exc.strerror or exc}") from None
    try:
        arrays = serde.decode_arrays(data)
    except ConfideError as exc:
        raise ConfigError(f"initial_model {path} is not a Confide safetensors model: {exc}") from None
    bad = [name for name, value in arrays.items() if not np.isfinite(value).all()]
    if bad:
        raise ConfigError(f"initial_model {path} holds NaN or infinite values in {bad[:3]}")
    return arrays


def initial_global(job: JobConfig, workload: Any) -> Arrays:
    """The job's first global model: :func:`start_model` (with SCAFFOLD's zero control variate when the strategy
    needs one)."""
    model = start_model(job, workload)
    return with_controls(model) if job.federation.strategy == "scaffold" else model


def loop_settings(
    job: JobConfig,
    *,
    sites: int,
    secure: SecureSettings | None,
    deployed: bool,
    checkpoint_dir: Path | None = None,
) -> LoopConfig:
    """The server loop's settings for ``sites`` sites: rounds, quorum, the share of sites sampled each round, the
    round deadline (each site's own time), the norm bound and weight caps, federated evaluation; retries and
    checkpoints where ``deployed``."""
    fed = job.federation
    return LoopConfig(
        rounds=fed.rounds,
        min_sites=min(fed.min_sites, sites) if not deployed else fed.min_sites,
        evaluate_every=fed.evaluate_every,
        deadline_s=fed.round_deadline_s,
        guard=guard_config(fed),
        checkpoint_dir=checkpoint_dir if deployed else None,
        quorum_retries=fed.quorum_retries if deployed else 0,
        retry_wait_s=fed.retry_wait_s,
        secure=secure,
        fraction=fed.fraction,
        sample_seed=job.seed,
    )


def simulated_privacy(job: JobConfig, sites: int) -> PrivacyConfig:
    """Every simulated site's privacy: the job as its policy, the job's quorum (at most the sites there are) the
    fewest contributors to a noisy sum when the job names none."""
    return job_as_policy(job.privacy, min(job.federation.min_sites, sites))


def deployed_privacy(job: JobConfig, policy: PrivacyConfig | None) -> PrivacyConfig:
    """A deployed site's privacy: the job's, never weaker than the policy in its kit on any point."""
    return stricter(job.privacy, policy)


def site_task(
    job: JobConfig,
    root: Path,
    name: str,
    privacy: PrivacyConfig | None = None,
    report: Callable[[str], Any] = print,
) -> Any:
    """One hospital's task in a deployment: its own data only (``root``), split as in simulation, with the DP-SGD
    its ``privacy`` asks for (default: the job's); every input it skipped is reported with its reason."""
    from confide.workloads.registry import make_workload

    workload = make_workload(job.task)
    site = workload.load_site(job.data, job.seed, root, name)
    for problem in site.skipped:
        report(f"skipped {problem.item}: {problem.reason}")
    dp_sgd = (privacy if privacy is not None else job.privacy).dp_sgd
    return workload.task(site.train, site.test, site=name, seed=job.seed, dp_sgd=dp_sgd)
