"""FedProx's proximal term (Li et al. 2020) on a site: ``mu/2 * ||w - w_global||^2`` added to the local objective.

The anchor ``w_global`` is a detached copy of the trainable parameters as the round received them. Without DP the
penalty joins the loss; under DP-SGD its gradient ``mu * (w - w_global)`` is added to the noised private gradient
(it reads no data, so it needs no privacy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from confide.errors import TaskError
from confide.records import Config


@dataclass(frozen=True)
class Proximal:
    """The pull towards the round's received parameters, with strength ``mu``."""

    mu: float
    anchor: tuple[torch.Tensor, ...]

    @classmethod
    def from_config(cls, model: torch.nn.Module, config: Config) -> Proximal | None:
        """The term the instruction asks for (``proximal_mu``), anchored at the model's current parameters; None
        when mu is 0 (plain local training)."""
        mu = float(config.get("proximal_mu", 0.0))
        if not (math.isfinite(mu) and mu >= 0):
            raise TaskError(f"proximal_mu must be finite and >= 0, got {mu}")
        if mu == 0:
            return None
        return cls(mu, tuple(p.detach().clone() for p in _trainable(model)))

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        """``mu/2 * sum((p - p0)^2)`` over the trainable parameters, differentiable in the model's."""
        total = sum(((p - p0) ** 2).sum() for p, p0 in zip(_trainable(model), self.anchor, strict=True))
        return 0.5 * self.mu * torch.as_tensor(total)

    def add_gradient(self, model: torch.nn.Module) -> None:
        """Add the penalty's gradient ``mu * (p - p0)`` to each trainable parameter's ``grad``."""
        with torch.no_grad():
            for p, p0 in zip(_trainable(model), self.anchor, strict=True):
                pull = self.mu * (p - p0)
                p.grad = pull if p.grad is None else p.grad + pull


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
