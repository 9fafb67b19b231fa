"""Local training, written once for every torch task: a round's steps from the received model to the update.

Each step draws a batch (a plain random batch from the job-seeded generator, or under DP-SGD a Poisson sample from
the site's secret generator), computes the task's loss on it, and takes one optimiser step with the local rules the
instruction asks for (FedProx's term, SCAFFOLD's correction, FedBN's kept norm layers; see
:mod:`confide.tasks.local_rules`). A loss that is not finite stops training with a :class:`TaskError` naming the
site and the step: an update trained through a NaN would be refused by the server anyway, and the site's operator
should hear where it went wrong.

A task gives: its model, its number of training examples, ``fetch(indices, generator)`` for the batch of those
examples (augmented with the generator where the task augments), and ``loss(module, batch)``, the batch's mean loss
computed through ``module`` (under DP-SGD a wrapper of the model that records each example's gradient).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from confide.errors import TaskError
from confide.records import Arrays, Config, TrainRes
from confide.tasks.dp_sgd import DpSgd
from confide.tasks.local_rules import LocalRules, SiteMemory

Fetch = Callable[[torch.Tensor, torch.Generator], Any]
BatchLoss = Callable[[torch.nn.Module, Any], torch.Tensor]
Optimiser = Literal["adam", "sgd"]


def seed_of(*parts: object) -> int:
    """A 63-bit seed from the parts (job seed, site, round, purpose), the same wherever it is computed."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Settings:
    """What one round of local training does, read from the instruction with the task's defaults."""

    steps: int
    lr: float
    batch: int
    rate: float  # the share of the site's examples in one batch: DP-SGD's sampling rate

    @classmethod
    def read(cls, config: Config, *, n: int, lr: float, batch_size: int) -> Settings:
        steps = int(config.get("local_steps", 1))
        rate_lr = float(config.get("lr", lr))
        batch = int(config.get("batch_size", batch_size))
        if steps < 0 or batch < 1 or not (np.isfinite(rate_lr) and rate_lr > 0):
            raise TaskError(
                f"local training needs steps >= 0, batch_size >= 1 and lr > 0, got {steps}, {batch} and {rate_lr}"
            )
        return cls(steps=steps, lr=rate_lr, batch=min(batch, max(n, 1)), rate=min(1.0, batch / max(n, 1)))


def sampling_rate(config: Config, *, n: int, batch_size: int) -> float:
    """DP-SGD's sampling rate for a site of ``n`` examples: the configured batch over n, at most 1."""
    return min(1.0, int(config.get("batch_size", batch_size)) / max(n, 1))


def make_optimiser(kind: Optimiser, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    return torch.optim.Adam(model.parameters(), lr=lr)


def train_locally(
    model: torch.nn.Module,
    arrays: Arrays,
    config: Config,
    memory: SiteMemory,
    *,
    n: int,
    fetch: Fetch,
    loss: BatchLoss,
    generator: torch.Generator,
    dp: DpSgd | None,
    round: int,
    where: str,
    lr: float,
    batch_size: int,
    optimiser: Optimiser = "adam",
    scaler: torch.amp.GradScaler | None = None,
) -> TrainRes:
    """One round of local training from ``arrays``; returns the update (trained minus received) and the loss.
    ``scaler``: float16 mixed precision's loss scaler (never with DP-SGD); a step whose scaled gradients overflow is
    skipped and the scale lowered."""
    if n <= 0:
        raise TaskError(f"{where} has no training examples")
    plan = Settings.read(config, n=n, lr=lr, batch_size=batch_size)
    rules = LocalRules.begin(model, arrays, {**config, "lr": plan.lr}, memory)
    if dp is not None:
        dp.new_round()  # fresh secret randomness for this round's sampling and noise
    model.train()
    opt = make_optimiser(optimiser, model, plan.lr)
    losses: list[float] = []
    for step in range(plan.steps):
        if dp is not None:  # Poisson sampling: each example in with probability q, as DP-SGD accounts
            idx = dp.sample(n, plan.rate)
            batch = fetch(idx, generator)

            def batch_loss(module: torch.nn.Module, b: Any = batch) -> torch.Tensor:
                return loss(module, b)

            try:
                value = dp.step(
                    batch_loss,
                    int(idx.shape[0]),
                    expected_batch=plan.rate * n,
                    optimiser=opt,
                    proximal=rules,
                )
            except TaskError as exc:
                raise TaskError(f"{where}, step {step + 1} of round {round}: {exc}") from None
        else:
            idx = torch.randperm(n, generator=generator)[: plan.batch]
            batch = fetch(idx, generator)
            opt.zero_grad(set_to_none=True)
            value_t = loss(model, batch)
            if not torch.isfinite(value_t):
                raise TaskError(f"{where}: training loss became {value_t.item()} at step {step + 1} of round {round}")
            if scaler is None:
                rules.objective(value_t).backward()
                opt.step()
            else:
                scaler.scale(rules.objective(value_t)).backward()
                scaler.step(opt)
                scaler.update()
            value = float(value_t.item())
        rules.after_step()
        if np.isfinite(value):
            losses.append(value)
    losses = losses or [float("nan")]
    return TrainRes(
        round=round,
        update=rules.finish(),
        num_examples=n,
        metrics={"loss": float(np.mean(losses)), "loss_last": losses[-1], "steps": float(plan.steps)},
    )
