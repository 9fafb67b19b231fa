"""The job a site received, described for its operator before they approve it (:mod:`confide.site.consent`).

Lines of plain text: the task and every one of its fields, the network, the rounds and local steps, the strategy,
the privacy the job asks for and the privacy this site runs (the job made stricter by the site's own policy), and
what will leave the site. Every value came from the server, so each is made one bounded printable line first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from confide.config import JobConfig
from confide.privacy.config import GaussianSpec, PrivacyConfig, SparsifySpec, SvtSpec
from confide.sanitize import one_line


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=True, separators=(", ", ": "))
    return one_line(text, 160)


def privacy_text(privacy: PrivacyConfig) -> str:
    """One line naming every privacy mechanism, the budget and secure aggregation."""
    parts: list[str] = []
    for spec in privacy.filters:
        if isinstance(spec, GaussianSpec):
            where = "added by each site" if spec.placement == "site" else "added by the server (sites clip)"
            parts.append(f"gaussian (clip {spec.clip:g}, noise multiplier {spec.noise_multiplier:g}, {where})")
        elif isinstance(spec, SparsifySpec):
            parts.append(f"sparsify ({spec.select}, {spec.fraction:g} of the entries; not differential privacy)")
        elif isinstance(spec, SvtSpec):
            parts.append(f"svt (epsilon {spec.epsilon:g} a round, at most {spec.fraction:g} of the entries)")
    if privacy.dp_sgd is not None:
        parts.append(f"DP-SGD (noise multiplier {privacy.dp_sgd.noise_multiplier:g}, clip {privacy.dp_sgd.clip:g})")
    if privacy.budget is not None:
        parts.append(f"budget epsilon {privacy.budget.epsilon:g} at delta {privacy.budget.delta:g}")
    if privacy.min_contributors is not None:
        parts.append(f"noise sized for at least {privacy.min_contributors} contributing site(s)")
    if privacy.secure_aggregation:
        parts.append("secure aggregation")
    return "; ".join(parts) or "none (no filter, no DP-SGD, no budget)"


def what_leaves(job: JobConfig, privacy: PrivacyConfig) -> list[str]:
    """What this site sends, and when, under ``privacy`` (see DESIGN.md, "What a site sends")."""
    names = [spec.type for spec in privacy.filters]
    after = f" after the filters {', '.join(names)}" if names else " (no filter)"
    if privacy.spends:
        update = f"the model update (trained minus received){after}, noised and charged to this site's ledger"
        extra = "a count of 1 (updates weigh equally), how the site protected it; no metrics, no timing"
    else:
        update = f"the model update (trained minus received){after}"
        extra = "the number of training cases, the training loss and the task's metrics, the training time"
    sparse = next((s for s in privacy.filters if isinstance(s, SparsifySpec | SvtSpec)), None)
    if sparse is not None:
        update += f", at most {sparse.fraction:g} of its entries"
    if privacy.secure_aggregation:
        update += ", masked (the server learns only the sum); with public keys, signatures, this site's certificate "
        update += "and sealed shares of its masks"
    lines = [f"    each round it takes part in: {update}", f"      and {extra}"]
    every = job.federation.evaluate_every
    if every and privacy.spends:
        lines.append("    federated evaluation: refused (exact scores under DP would leave unaccounted)")
    elif every:
        lines.append(f"    every {every} round(s): the global model's exact metrics on this site's own test split")
    final = "the server sends the final model back" if job.federation.send_final_model else "nothing comes back"
    lines.append(f"    at the end: nothing; {final}, and fine-tuning on this site's patients stays here")
    lines.append("    never: images, rows, cases or their statistics; the site's ledger and audit log stay here")
    return lines


def describe_job(job: JobConfig, runs: PrivacyConfig, policy: Path | None) -> list[str]:
    """The job as an operator reads it before approving it (every task field the job sets; unset ones left out).
    ``runs``: the privacy this site runs (the job's, made stricter by ``policy``, the site's policy file, or
    ``None`` when the kit has none)."""
    task = job.task.model_dump(mode="json")
    fed = job.federation
    lines = [f"the server sends job {job.name!r} (seed {job.seed})", f"  task: {_value(task.get('name', '?'))}"]
    lines += [f"    {one_line(key, 40)}: {_value(v)}" for key, v in task.items() if key != "name" and v is not None]
    network = task.get("model", task.get("entry", "the task's own"))
    start = (
        f"the server's file {_value(str(job.initial_model))}" if job.initial_model else "the server's, from the seed"
    )
    lines.append(f"  network: {_value(network)}; initial model: {start}")
    lines.append(
        f"  rounds: {fed.rounds}, local steps: {fed.local_steps} a round, strategy: {fed.strategy}, quorum: "
        f"{fed.min_sites} site(s), sites sampled a round: {fed.fraction:g} of those connected"
    )
    lines.append(f"  privacy the job asks: {privacy_text(job.privacy)}")
    own = f"the job made stricter by {policy}" if policy is not None else "no policy in the kit: the job's"
    lines.append(f"  privacy this site runs ({own}): {privacy_text(runs)}")
    lines.append("  what leaves this site:")
    lines += what_leaves(job, runs)
    return lines
