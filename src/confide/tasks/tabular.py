"""Binary classification on a clinical table (one site's rows): logistic regression or a small MLP, in torch."""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import torch

from confide.errors import TaskError
from confide.privacy.config import DpSgdSpec
from confide.privacy.spend import Spend
from confide.records import Arrays, Config, EvalRes, TrainRes
from confide.tasks.dp_sgd import DpSgd
from confide.tasks.proximal import Proximal
from confide.tasks.torch_io import difference, load_arrays, module_arrays

Model = Literal["logistic", "mlp"]


def build_table_model(features: int, model: Model = "logistic", hidden: int = 16) -> torch.nn.Module:
    if model == "logistic":
        return torch.nn.Sequential(torch.nn.Linear(features, 1))
    return torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))


def table_initial(features: int, model: Model, seed: int) -> Arrays:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return module_arrays(build_table_model(features, model))


def _bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), y)


class TabularTask:
    """One site's table task: its training rows for local steps of Adam on mini-batches, its test rows for accuracy."""

    def __init__(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        *,
        site: str,
        model: Model = "logistic",
        seed: int = 0,
        dp_sgd: DpSgdSpec | None = None,
    ) -> None:
        if x_train.ndim != 2 or x_train.shape[0] != y_train.shape[0] or x_train.shape[0] == 0:
            raise TaskError(f"site {site}: training rows and labels do not match ({x_train.shape}, {y_train.shape})")
        self.x, self.y = torch.from_numpy(x_train), torch.from_numpy(y_train)
        self.x_test, self.y_test = torch.from_numpy(x_test), torch.from_numpy(y_test)
        self.site, self.seed = site, seed
        self.model = build_table_model(x_train.shape[1], model)
        self.dp = (
            None if dp_sgd is None else DpSgd(self.model, clip=dp_sgd.clip, noise_multiplier=dp_sgd.noise_multiplier)
        )

    def _rate(self, config: Config) -> float:
        return min(1.0, int(config.get("batch_size", 16)) / len(self.y))

    def privacy_spend(self, config: Config) -> list[Spend]:
        if self.dp is None:
            return []
        return [self.dp.spend(self._rate(config), int(config.get("local_steps", 1)))]

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        steps = int(config.get("local_steps", 1))
        batch = int(config.get("batch_size", 16))
        load_arrays(self.model, arrays)
        proximal = Proximal.from_config(self.model, config)
        self.model.train()
        optimiser = torch.optim.Adam(self.model.parameters(), lr=float(config.get("lr", 0.05)))
        digest = hashlib.sha256(f"{self.seed}/{self.site}/{round}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)
        rate = self._rate(config)
        losses = []
        for _ in range(steps):
            if self.dp is not None:
                idx = torch.nonzero(torch.rand(len(self.y), generator=gen) < rate).flatten()
                value = self.dp.step(
                    _bce,
                    self.x[idx],
                    self.y[idx],
                    expected_batch=rate * len(self.y),
                    optimiser=optimiser,
                    gen=gen,
                    proximal=proximal,
                )
                if np.isfinite(value):
                    losses.append(value)
                continue
            idx = torch.randperm(len(self.y), generator=gen)[:batch]
            optimiser.zero_grad(set_to_none=True)
            loss = _bce(self.model(self.x[idx]), self.y[idx])
            objective = loss if proximal is None else loss + proximal.penalty(self.model)
            objective.backward()
            optimiser.step()
            losses.append(float(loss.item()))
        return TrainRes(
            round=round,
            update=difference(module_arrays(self.model), arrays),
            num_examples=len(self.y),
            metrics={"loss": float(np.mean(losses)) if losses else float("nan")},
        )

    @torch.no_grad()
    def accuracy(self, arrays: Arrays) -> float:
        load_arrays(self.model, arrays)
        self.model.eval()
        predicted = (self.model(self.x_test).squeeze(-1) > 0).float()
        return float((predicted == self.y_test).float().mean())

    def evaluate(self, arrays: Arrays, config: Config, round: int) -> EvalRes:
        load_arrays(self.model, arrays)
        self.model.eval()
        with torch.no_grad():
            loss = float(_bce(self.model(self.x_test), self.y_test))
        return EvalRes(
            round=round, num_examples=len(self.y_test), loss=loss, metrics={"accuracy": self.accuracy(arrays)}
        )
