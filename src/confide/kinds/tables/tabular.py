"""Prediction on a clinical table (one site's rows): a linear model or a small MLP, in torch.

- binary: one logit, binary cross-entropy; scores accuracy, balanced accuracy and ROC AUC.
- multiclass: K logits, cross-entropy; scores accuracy, balanced accuracy and Cohen's kappa.
- survival: one risk score, the Cox partial likelihood (Breslow ties) on each mini-batch, whose patients form the
  risk sets (the batch is sorted by time inside the loss); scores Harrell's C-index and the Cox loss on the test rows.
  The output layer has no bias: the Cox likelihood does not depend on one.

Every training step goes through :class:`~confide.tasks.local_rules.LocalRules` (FedProx, SCAFFOLD, FedBN).
DP-SGD works for binary and multiclass. It is refused for survival: the Cox loss of a batch is not a sum of
per-patient terms (each patient sits in the risk set of every earlier event), so clipping each patient's gradient
of the batch loss does not bound what one patient changes, and the accountant's guarantee would not hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from confide.errors import TaskError
from confide.kinds.tables.metrics import c_index, cohen_kappa, cox_loss
from confide.kinds.tables.table import TableRows
from confide.privacy.config import DpSgdSpec
from confide.privacy.spend import Spend
from confide.records import Arrays, Config, EvalRes, TrainRes
from confide.tasks.class_metrics import accuracy, balanced_accuracy, binary_auc
from confide.tasks.dp_sgd import DpSgd
from confide.tasks.local_rules import SiteMemory
from confide.tasks.loop import sampling_rate, seed_of, train_locally
from confide.tasks.torch_io import load_arrays, module_arrays

Kind = Literal["binary", "multiclass", "survival"]
Model = Literal["linear", "logistic", "mlp"]  # "logistic" is the earlier name of "linear"
Norm = Literal["none", "batch"]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "binary": ("accuracy", "balanced_accuracy", "auc"),
    "multiclass": ("accuracy", "balanced_accuracy", "cohen_kappa"),
    "survival": ("c_index", "cox_loss"),
}


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


def table_initial(
    features: int,
    model: Model = "linear",
    seed: int = 0,
    *,
    kind: Kind = "binary",
    classes: int = 2,
    hidden: int = 16,
    norm: Norm = "none",
) -> Arrays:
    """The untrained global model, identical for the same arguments."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = outputs_for(kind, classes)
        return module_arrays(
            build_table_model(features, model, hidden, outputs=out, norm=norm, bias=kind != "survival")
        )


def _bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), y)


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, y)


def _cox(risk: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return cox_loss(risk, y[:, 0], y[:, 1])


LOSSES: dict[str, Loss] = {"binary": _bce, "multiclass": _cross_entropy, "survival": _cox}


def _targets(y: np.ndarray, kind: Kind, site: str) -> torch.Tensor:
    if kind == "survival":
        if y.ndim != 2 or y.shape[1] != 2:
            raise TaskError(f"site {site}: survival targets must be (n, 2) time and event, got {y.shape}")
        return torch.from_numpy(np.asarray(y, dtype=np.float32))
    if y.ndim != 1:
        raise TaskError(f"site {site}: {kind} targets must be one label per row, got {y.shape}")
    if kind == "multiclass":
        return torch.from_numpy(np.asarray(y, dtype=np.int64))
    return torch.from_numpy(np.asarray(y, dtype=np.float32))


class TabularTask:
    """One site's table task: its training rows for local steps of Adam on mini-batches, its test rows to score."""

    def __init__(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray | None = None,
        y_test: np.ndarray | None = None,
        *,
        site: str,
        model: Model = "linear",
        seed: int = 0,
        dp_sgd: DpSgdSpec | None = None,
        kind: Kind = "binary",
        classes: int | None = None,
        hidden: int = 16,
        norm: Norm = "none",
        lr: float = 0.05,
        batch_size: int = 32,
    ) -> None:
        if x_train.ndim != 2 or x_train.shape[0] != y_train.shape[0] or x_train.shape[0] == 0:
            raise TaskError(f"site {site}: training rows and labels do not match ({x_train.shape}, {y_train.shape})")
        if x_test is not None and (y_test is None or x_test.shape[0] != y_test.shape[0]):
            raise TaskError(f"site {site}: test rows and labels do not match")
        if kind == "survival" and dp_sgd is not None:
            raise TaskError(
                f"site {site}: DP-SGD cannot train a survival (Cox) model: the Cox loss of a batch is not a sum of "
                "per-patient terms (each patient is in the risk set of every earlier event), so clipping per-patient "
                "gradients does not bound one patient's influence. Use the client-level Gaussian filter instead"
            )
        self.kind: Kind = kind
        self.site, self.seed = site, seed
        self.lr, self.batch_size = lr, batch_size
        self.x, self.y = torch.from_numpy(np.asarray(x_train, dtype=np.float32)), _targets(y_train, kind, site)
        self.test = (
            None if x_test is None or y_test is None else TableRows(np.asarray(x_test, np.float32), y_test, kind)
        )
        if kind == "multiclass" and classes is None:
            classes = int(max(y_train.max(), -1 if y_test is None or y_test.size == 0 else y_test.max())) + 1
        self.classes = classes or 2
        self.model = build_table_model(
            x_train.shape[1], model, hidden, outputs=outputs_for(kind, self.classes), norm=norm, bias=kind != "survival"
        )
        self.loss_fn = LOSSES[kind]
        self.dp = (
            None if dp_sgd is None else DpSgd(self.model, clip=dp_sgd.clip, noise_multiplier=dp_sgd.noise_multiplier)
        )
        self.memory = SiteMemory()

    def personal(self, arrays: Arrays) -> Arrays:
        """The global model as this site uses it (its own normalisation layers under FedBN, controls removed)."""
        return self.memory.personal(arrays)

    def privacy_spend(self, config: Config) -> list[Spend]:
        if self.dp is None:
            return []
        rate = sampling_rate(config, n=len(self.y), batch_size=self.batch_size)
        return [self.dp.spend(rate, int(config.get("local_steps", 1)))]

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        return train_locally(
            self.model,
            arrays,
            config,
            self.memory,
            n=len(self.y),
            fetch=lambda idx, gen: (self.x[idx], self.y[idx]),
            loss=lambda module, batch: self.loss_fn(module(batch[0]), batch[1]),
            generator=torch.Generator().manual_seed(seed_of(self.seed, self.site, round)),
            dp=self.dp,
            round=round,
            where=f"site {self.site}",
            lr=self.lr,
            batch_size=self.batch_size,
        )

    @torch.no_grad()
    def _outputs(self, arrays: Arrays, x: np.ndarray) -> torch.Tensor:
        load_arrays(self.model, self.memory.personal(arrays))
        self.model.eval()
        return self.model(torch.from_numpy(np.asarray(x, dtype=np.float32)))

    def score(self, arrays: Arrays, data: TableRows) -> dict[str, float]:
        """Every metric of :data:`METRIC_KEYS` for this kind, for the model ``arrays`` on ``data``."""
        if len(data) == 0:
            raise TaskError(f"site {self.site}: no rows to score")
        out = self._outputs(arrays, data.x)
        if self.kind == "survival":
            risk = out[:, 0].numpy()
            y = np.asarray(data.y, dtype=np.float64)
            loss = float(_cox(out, torch.from_numpy(np.asarray(data.y, dtype=np.float32))))
            return {"c_index": c_index(y[:, 0], y[:, 1], risk), "cox_loss": loss}
        truth = np.asarray(data.y).astype(np.int64)
        if self.kind == "binary":
            logit = out[:, 0].numpy()
            pred = (logit > 0).astype(np.int64)
            return {
                "accuracy": accuracy(truth, pred, 2),
                "balanced_accuracy": balanced_accuracy(truth, pred, 2),
                "auc": binary_auc(truth, logit),
            }
        pred = out.argmax(dim=1).numpy().astype(np.int64)
        return {
            "accuracy": accuracy(truth, pred, self.classes),
            "balanced_accuracy": balanced_accuracy(truth, pred, self.classes),
            "cohen_kappa": cohen_kappa(truth, pred, self.classes),
        }

    def accuracy(self, arrays: Arrays) -> float:
        """Accuracy on the site's own test rows (binary and multiclass)."""
        if self.kind == "survival":
            raise TaskError("a survival task has no accuracy: see score()['c_index']")
        return self.score(arrays, self._test())["accuracy"]

    def _test(self) -> TableRows:
        if self.test is None or len(self.test) == 0:
            raise TaskError(f"site {self.site} has no test rows")
        return self.test

    def evaluate(self, arrays: Arrays, config: Config, round: int) -> EvalRes:
        test = self._test()
        out = self._outputs(arrays, test.x)
        with torch.no_grad():
            loss = float(self.loss_fn(out, _targets(np.asarray(test.y), self.kind, self.site)))
        return EvalRes(round=round, num_examples=len(test), loss=loss, metrics=self.score(arrays, test))
