"""Patient-level differential privacy inside a site's training: DP-SGD (Abadi et al. 2016) with Opacus.

Each step draws a Poisson sample of the site's cases (each case in with probability q = batch / n), computes every
case's own gradient with Opacus (expanded weights), clips each to L2 norm C, sums them, adds N(0, (sigma C)^2)
and divides by the expected batch size q n. The optimiser (Adam here) only post-processes that noised gradient.
A round of k local steps is k subsampled Gaussian releases: the site's ledger composes them with the RDP
accountant, across all rounds.

A model with BatchNorm cannot have per-case gradients (BatchNorm mixes the cases of a batch): it is refused with
the reason. The noise and the Poisson sample come from a generator keyed from the operating system's CSPRNG at the
site (:mod:`confide.privacy.secret_random`), re-keyed every round: no one who knows the job's seed can regenerate
them. Everything else in training (the initial model, augmentation) keeps the job's seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Protocol

import torch

from confide.errors import TaskError
from confide.privacy.secret_random import poisson_sample, secret_generator, secret_normal
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
                "not BatchNorm (brain_tumor: model segresnet; image_classification and its mammo_density preset: "
                "norm group; table: norm none; mil: norm layer; your own network: GroupNorm or LayerNorm)"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from opacus.grad_sample import GradSampleModuleExpandedWeights

            self.module = GradSampleModuleExpandedWeights(model, loss_reduction="mean")
        self.model = model
        self.clip = float(clip)
        self.noise_multiplier = float(noise_multiplier)
        self._rng = secret_generator()

    def new_round(self) -> None:
        """A fresh secret key for this round's sampling and noise."""
        self._rng = secret_generator()

    def sample(self, n: int, rate: float) -> torch.Tensor:
        """This step's Poisson sample of the site's ``n`` cases (each in with probability ``rate``)."""
        return poisson_sample(self._rng, n, rate)

    def spend(self, sampling_rate: float, steps: int) -> Spend:
        params = {"clip": self.clip, "sigma": self.noise_multiplier, "q": sampling_rate, "steps": steps}
        return Spend("dp-sgd", params, noise_multiplier=self.noise_multiplier, sampling_rate=sampling_rate, steps=steps)

    def step(
        self,
        batch_loss: Callable[[torch.nn.Module], torch.Tensor],
        count: int,
        *,
        expected_batch: float,
        optimiser: torch.optim.Optimizer,
        proximal: GradientAddOn | None = None,
    ) -> float:
        """One private step on a Poisson-sampled batch of ``count`` cases (which may be none); returns its loss.

        ``batch_loss(module)`` is the mean loss of the batch computed through ``module`` (the model wrapped to
        record each case's gradient): the mean of per-case terms, each depending on its own case only.
        ``proximal`` (FedProx) adds its gradient after the noise: it reads no data, so it spends no privacy."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        summed = [torch.zeros_like(p) for p in params]
        loss_value = float("nan")
        if count > 0:
            optimiser.zero_grad(set_to_none=True)
            loss = batch_loss(self.module)
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
            noise = secret_normal(self._rng, std, tuple(p.shape)).to(p.device)
            p.grad = (total + noise) / expected_batch
        if proximal is not None:
            proximal.add_gradient(self.model)
        optimiser.step()
        return loss_value
