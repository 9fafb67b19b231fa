"""The table audit: membership of canary rows in one site's update, and the epsilon it proves.

``rounds`` fresh sites each train one round on the audited site's rows plus their own canaries, each canary
included with probability 1/2. The rounds are independent and no canary is in two of them, so together they are one
run of a mechanism that, for each canary, is exactly as private as one round (each canary touches one round only):
Steinke et al.'s one-run bound holds over all ``rounds x canaries`` guesses, and the upper bound it is held to is
one round's. The attacker scores canaries by the loss the released update took off them
(:mod:`confide.privacy.audit_membership`); the guess counts tried are fixed in advance, with a Bonferroni correction.

Every configuration sees the same canaries and the same inclusion draws.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch.utils.data import TensorDataset

from confide.audit.data import SiteRows
from confide.audit.result import AuditProgress, AuditResult, AuditRow
from confide.audit.settings import AuditSettings
from confide.audit.site import AuditConfig, audit_configs, release_once
from confide.audit.threads import one_thread
from confide.kinds.tables.model import build_table_model
from confide.privacy.audit_bounds import Guesses, auc, best_one_run_epsilon
from confide.privacy.audit_membership import (
    added,
    dirac_canaries,
    draw_inclusion,
    labels_against_drift,
    loss_drop_scores,
)
from confide.records import Arrays, SparseArrays


def canary_count(settings: AuditSettings, features: int) -> int:
    """Canaries per round: the setting, or one per feature (linear model) or two (MLP: +/- activate different
    hidden units)."""
    given = settings.table.canaries
    return given if given is not None else features * (2 if settings.table.model == "mlp" else 1)


def run_table_audit(settings: AuditSettings, site: SiteRows, progress: AuditProgress) -> AuditResult:
    """Plant canaries in ``site``'s rows and attack its updates under each configuration of ``settings``."""
    with one_thread():
        return _table_audit(settings, site, progress)


def _table_audit(settings: AuditSettings, site: SiteRows, progress: AuditProgress) -> AuditResult:
    began = time.perf_counter()
    s = settings.table
    workload, base = site.workload, site.rows
    x, y = base.tensors
    features = int(x.shape[1])
    initial = workload.initial(settings.seed)
    model = build_table_model(features, s.model, s.hidden)  # the attacker's copy
    instruction = {"local_steps": s.steps, "lr": s.lr, "batch_size": s.batch}
    count = canary_count(settings, features)
    canaries = dirac_canaries(features, count, s.canary_scale)
    reference = workload.task(base, None, site=site.site, seed=settings.seed, dp_sgd=None)
    drift = reference.train(initial, instruction, 1).update  # the auditor's own round, never released
    labels = labels_against_drift(model, initial, added(initial, _dense(drift)), canaries)
    rng = np.random.default_rng([settings.seed, 11])
    draws = [draw_inclusion(rng, count) for _ in range(s.rounds)]
    configs = audit_configs(settings, clip=settings.table_clip)
    progress.phase(f"table audit: {len(configs)} configurations x {s.rounds} rounds", len(configs) * s.rounds)
    rows = []
    for audit in configs:
        scores: list[np.ndarray] = []
        ledger_eps = record_eps = math.inf
        for number, included in enumerate(draws):
            train = TensorDataset(
                torch.cat([x, torch.from_numpy(canaries[included]).to(x.dtype)]),
                torch.cat([y, torch.from_numpy(labels[included]).to(y.dtype)]),
            )
            released = release_once(
                workload,
                train,
                audit,
                initial=initial,
                config=instruction,
                seed=settings.seed,
                round=number + 1,
                delta=settings.delta,
            )
            ledger_eps, record_eps = released.ledger_epsilon, released.record_epsilon
            after = added(initial, _dense(released.update))
            scores.append(loss_drop_scores(model, initial, after, canaries, labels))
            last = number + 1 == len(draws)
            progress.advance(1, status=f"{audit.name}: {len(draws)} rounds" if last else None)
        every, member = np.concatenate(scores), np.concatenate(draws)
        lower, guessed = best_one_run_epsilon(
            every, member, settings.delta, counts=s.guess_counts, confidence=settings.confidence
        )
        rows.append(_row(audit, ledger_eps, record_eps, lower, guessed, auc(every, member)))
    notes = (
        f"data: {site.source}; audited site {site.site!r}: {len(base)} training rows, {features} features",
        f"each round: the site trains {s.steps} Adam steps at lr {s.lr:g} on batches of {s.batch} ({s.model} model)",
        f"canaries: {count} per round x {s.rounds} rounds = {count * s.rounds}, each one feature {s.canary_scale:g} "
        "standard deviations out, labelled against the data's pull; each included with probability 1/2",
        f"bound: Steinke, Nasr & Jagielski (2023), confidence {settings.confidence:.0%}, delta {settings.delta:g}; "
        f"guess counts tried {list(s.guess_counts)} (Bonferroni)",
    )
    return AuditResult(
        task="table",
        description=workload.describe(),
        rows=tuple(rows),
        notes=notes,
        settings={"seed": settings.seed, "delta": settings.delta, "confidence": settings.confidence, **vars(s)},
        seconds=time.perf_counter() - began,
        baselines={"auc": 0.5, "epsilon": 0.0},
    )


def _dense(update: Arrays | SparseArrays) -> Arrays:
    """A sparse update as the server reads it with ``missing: zero`` (an entry not sent is no change)."""
    return update.densify() if isinstance(update, SparseArrays) else update


def _row(
    audit: AuditConfig, ledger_eps: float, record_eps: float, lower: float, guessed: Guesses, area: float
) -> AuditRow:
    return AuditRow(
        config=audit.name,
        label=audit.label,
        ledger_epsilon=ledger_eps,
        record_epsilon=record_eps,
        lower_epsilon=lower,
        attack="membership (one run)",
        metrics={"auc": area, "guesses": float(guessed.guesses), "correct": float(guessed.correct)},
        summary=f"AUC {area:.2f}, {guessed.correct}/{guessed.guesses} guesses right",
    )
