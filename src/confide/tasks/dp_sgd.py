"""Patient-level differential privacy inside a site's training: DP-SGD (Abadi et al. 2016) with Opacus.

Each step draws a Poisson sample of the site's cases (each case in with probability q = batch / n), computes every
case's own gradient with Opacus (expanded weights), clips each to L2 norm C, sums them, adds N(0, (sigma C)^2)
and divides by the expected batch size q n. The optimiser (Adam here) only post-processes that noised gradient.
A round of k local steps is k subsampled Gaussian releases: the site's ledger composes them with the RDP
accountant, across all rounds.

A model with BatchNorm cannot have per-case gradients (BatchNorm mixes the cases of a batch): it is refused with
the reason. Noise comes from torch's generator seeded per site and round, like the rest of training; it is not a
cryptographically secure source.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Protocol

import torch

from confide.errors import TaskError
from confide.privacy.spend import Spend


class GradientAddOn(Protocol):
    """What may add a data-free gradient after the noise (FedProx's proximal term through LocalRules)."""

    def add_gradient(self, model: torch.nn.Module) -> None: ...


class DpSgd:
    def __init__(self, model: torch.nn.Module, *, clip: float, noise_multiplier: float) -> None:
        from opacus.validators import ModuleValidator

        if not (math.isfinite(clip) and clip > 0 and math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise TaskError(f"DP-SGD needs clip > 0 and noise_multiplier > 0, got {clip} and {noise_multiplier}")
        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            reason = str(problems[0]).split(". ")[0]
            raise TaskError(
                f"DP-SGD cannot train this model: {reason}. Use normalisation that works on one case at a time, "
                "not BatchNorm (brain_tumor: model segresnet; mammo_density: norm group; table: norm none; "
                "mil: norm layer)"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from opacus.grad_sample import GradSampleModuleExpandedWeights

            self.module = GradSampleModuleExpandedWeights(model, loss_reduction="mean")
        self.model = model
        self.clip = float(clip)
        self.noise_multiplier = float(noise_multiplier)

    def spend(self, sampling_rate: float, steps: int) -> Spend:
        params = {"clip": self.clip, "sigma": self.noise_multiplier, "q": sampling_rate, "steps": steps}
        return Spend("dp-sgd", params, noise_multiplier=self.noise_multiplier, sampling_rate=sampling_rate, steps=steps)

    def step(
        self,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        expected_batch: float,
        optimiser: torch.optim.Optimizer,
        gen: torch.Generator,
        proximal: GradientAddOn | None = None,
    ) -> float:
        """One private step on the Poisson-sampled batch (x, y), which may be empty; returns the batch loss.
        ``proximal`` (FedProx) adds its gradient after the noise: it reads no data, so it spends no privacy."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        summed = [torch.zeros_like(p) for p in params]
        loss_value = float("nan")
        if x.shape[0] > 0:
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(self.module(x), y)
            if not torch.isfinite(loss):
                raise TaskError(f"DP-SGD: training loss became {loss.item()}")
            loss.backward()
            samples: list[torch.Tensor] = [p.grad_sample for p in params]  # type: ignore[attr-defined]
            norms = torch.stack([g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in samples]).sum(dim=0).sqrt()
            factors = torch.clamp(self.clip / (norms + 1e-12), max=1.0)
            for total, g in zip(summed, samples, strict=True):
                total += torch.einsum("i,i...->...", factors, g)
            for p in params:
                p.grad_sample = None  # type: ignore[attr-defined]
            loss_value = float(loss.item())
        std = self.noise_multiplier * self.clip
        for p, total in zip(params, summed, strict=True):
            noise = torch.normal(0.0, std, size=p.shape, generator=gen)
            p.grad = (total + noise) / expected_batch
        if proximal is not None:
            proximal.add_gradient(self.model)
        optimiser.step()
        return loss_value
