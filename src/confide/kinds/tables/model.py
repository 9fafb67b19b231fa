"""The clinical-table task's network: a linear model or a small MLP, sized by the encoded columns.

- binary: one logit; multiclass: one logit per class; survival: one risk score, from an output layer without bias
  (the Cox likelihood does not depend on one).
"""

from __future__ import annotations

from typing import Literal

import torch

from confide.errors import TaskError

Kind = Literal["binary", "multiclass", "survival"]
Model = Literal["linear", "logistic", "mlp"]  # "logistic" is the earlier name of "linear"
Norm = Literal["none", "batch"]


def outputs_for(kind: Kind, classes: int = 2) -> int:
    """Outputs of the model: one logit (binary), one per class (multiclass), one risk score (survival)."""
    if kind == "multiclass":
        if classes < 2:
            raise TaskError(f"a multiclass task needs 2 or more classes, got {classes}")
        return classes
    return 1


def build_table_model(
    features: int,
    model: Model = "linear",
    hidden: int = 16,
    *,
    outputs: int = 1,
    norm: Norm = "none",
    bias: bool = True,
) -> torch.nn.Module:
    """``Linear(features, outputs)``, or ``Linear -> [BatchNorm1d] -> ReLU -> Linear`` for the MLP."""
    if features < 1:
        raise TaskError(f"a table model needs at least one feature, got {features}")
    if model in ("linear", "logistic"):
        if norm != "none":
            raise TaskError("the linear table model has no hidden layer to normalise: use model mlp for norm batch")
        return torch.nn.Sequential(torch.nn.Linear(features, outputs, bias=bias))
    layers: list[torch.nn.Module] = [torch.nn.Linear(features, hidden)]
    if norm == "batch":
        layers.append(torch.nn.BatchNorm1d(hidden))
    layers += [torch.nn.ReLU(), torch.nn.Linear(hidden, outputs, bias=bias)]
    return torch.nn.Sequential(*layers)


def kind_model(
    kind: Kind, features: int, model: Model = "linear", hidden: int = 16, *, classes: int = 2, norm: Norm = "none"
) -> torch.nn.Module:
    """The untrained network of a ``kind`` task (outputs and bias as the module's docstring says)."""
    out = outputs_for(kind, classes)
    return build_table_model(features, model, hidden, outputs=out, norm=norm, bias=kind != "survival")
