"""The clinical-table task's training losses, one per kind, each the mean over a batch of the model's outputs.

- binary: binary cross-entropy of the one logit; multiclass: cross-entropy of the logits.
- survival: the Cox partial likelihood (Breslow ties) of the batch, whose patients form the risk sets (sorted by
  time inside :func:`~confide.kinds.tables.metrics.cox_loss`). It is not a mean of per-patient terms (each patient is
  in the risk set of every earlier event), so DP-SGD cannot bound one patient's influence on it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from confide.kinds.tables.metrics import cox_loss

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def binary_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y``: (n,) float 0/1."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), y)


def multiclass_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y``: (n,) int64 class indices."""
    return torch.nn.functional.cross_entropy(logits, y)


def survival_loss(risk: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y``: (n, 2) float time and event."""
    return cox_loss(risk, y[:, 0], y[:, 1])


LOSSES: dict[str, Loss] = {"binary": binary_loss, "multiclass": multiclass_loss, "survival": survival_loss}
