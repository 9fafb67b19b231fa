"""Slide-level classification from bags of tile features (multiple-instance learning).

Two networks share a tile encoder (linear, normalisation, ReLU, dropout):

- :class:`AttentionMil`: gated attention pooling (Ilse, Tomczak and Welling 2018): each tile gets a weight
  ``softmax_i(w^T (tanh(V h_i) * sigmoid(U h_i)))``; the slide is classified from the weighted mean of its tiles.
- :class:`TopKMil`: every tile gets a score per class; the slide is classified from the mean of the ``top_k``
  highest and the ``top_k`` lowest scores of each class (as CHOWDER, Courtiol et al. 2018).

A step's slides hold different numbers of tiles: they are padded to the largest, and a last input channel marks
the real tiles (1) from the padding (0), so a batch is one tensor (slides, tiles, dim + 1). Padding never reaches
the output (its attention is exactly zero; it is never among the top or bottom tiles), so every slide's gradient
is its own: under DP-SGD the slide is the unit of privacy and Opacus's expanded weights compute exact per-slide
gradients of the padded batch. BatchNorm (``norm: batch``) mixes slides and is refused under DP-SGD.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from confide.data.slides import SlideBag, SlideSet
from confide.errors import TaskError
from confide.privacy.config import DpSgdSpec
from confide.privacy.spend import Spend
from confide.records import Arrays, Config, EvalRes, TrainRes
from confide.tasks.dp_sgd import DpSgd
from confide.tasks.local_rules import SiteMemory, norm_state_names
from confide.tasks.loop import seed_of, train_locally
from confide.tasks.mil_config import MilTaskConfig
from confide.tasks.torch_io import load_arrays, module_arrays


def _unpack(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return packed[..., :-1], packed[..., -1] > 0.5


class TileEncoder(nn.Module):
    def __init__(self, dim: int, hidden: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, hidden)
        self.norm: nn.Module = {"layer": nn.LayerNorm(hidden), "batch": nn.BatchNorm1d(hidden)}.get(norm, nn.Identity())
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        if isinstance(self.norm, nn.BatchNorm1d):  # statistics over the real tiles only
            out = torch.zeros_like(h)
            real = h[mask]
            if self.training and real.shape[0] < 2:
                n = self.norm
                out[mask] = nn.functional.batch_norm(real, n.running_mean, n.running_var, n.weight, n.bias, False)
            else:
                out[mask] = self.norm(real)
            h = out
        else:
            h = self.norm(h)
        return self.dropout(torch.relu(h))


class AttentionMil(nn.Module):
    def __init__(self, dim: int, hidden: int, classes: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.encoder = TileEncoder(dim, hidden, norm, dropout)
        self.attention_v = nn.Linear(hidden, hidden)
        self.attention_u = nn.Linear(hidden, hidden)
        self.attention_w = nn.Linear(hidden, 1)
        self.classifier = nn.Linear(hidden, classes)

    def _attend(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = _unpack(packed)
        h = self.encoder(x, mask)
        gate = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        logits = self.attention_w(gate).squeeze(-1).masked_fill(~mask, float("-inf"))
        return torch.softmax(logits, dim=1), h

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        weights, h = self._attend(packed)
        return self.classifier(torch.einsum("bn,bnh->bh", weights, h))

    def tile_scores(self, packed: torch.Tensor) -> torch.Tensor:
        """Each tile's attention (slides, tiles): sums to one over a slide's tiles, zero on padding."""
        return self._attend(packed)[0]


class TopKMil(nn.Module):
    def __init__(self, dim: int, hidden: int, classes: int, norm: str, dropout: float, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.encoder = TileEncoder(dim, hidden, norm, dropout)
        self.scorer = nn.Linear(hidden, classes)
        self.head = nn.Linear(2 * classes, classes)
        with torch.no_grad():  # start as the plain mean of the top and bottom scores of each class
            self.head.weight.copy_(torch.cat([torch.eye(classes), torch.eye(classes)], dim=1) / 2)
            self.head.bias.zero_()

    def tile_scores(self, packed: torch.Tensor) -> torch.Tensor:
        """Each tile's score per class (slides, tiles, classes)."""
        x, mask = _unpack(packed)
        return self.scorer(self.encoder(x, mask))

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        mask = _unpack(packed)[1]
        scores = self.tile_scores(packed)
        k = min(self.top_k, scores.shape[1])
        count = mask.sum(dim=1).clamp(max=self.top_k).to(scores.dtype)[:, None]  # (slides, 1)
        use = (torch.arange(k, device=scores.device)[None, :] < count)[..., None]  # (slides, k, 1)
        high = scores.masked_fill(~mask[..., None], float("-inf")).topk(k, dim=1).values
        low = -(-scores).masked_fill(~mask[..., None], float("-inf")).topk(k, dim=1).values
        zero = torch.zeros((), dtype=scores.dtype)
        high_mean = torch.where(use, high, zero).sum(dim=1) / count
        low_mean = torch.where(use, low, zero).sum(dim=1) / count
        return self.head(torch.cat([high_mean, low_mean], dim=-1))


def build_mil_model(config: MilTaskConfig, dim: int) -> nn.Module:
    if config.pooling == "attention":
        return AttentionMil(dim, config.hidden, config.classes, config.norm, config.dropout)
    return TopKMil(dim, config.hidden, config.classes, config.norm, config.dropout, config.top_k)


def mil_initial(config: MilTaskConfig, dim: int, seed: int) -> Arrays:
    """The untrained global model, identical for the same config, dimension and seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return module_arrays(build_mil_model(config, dim))


def mil_norm_names(config: MilTaskConfig, dim: int) -> frozenset[str]:
    with torch.random.fork_rng(devices=[]):
        return norm_state_names(build_mil_model(config, dim))


def pack(bags: list[torch.Tensor]) -> torch.Tensor:
    """Bags of tile features (tiles_i, dim) as one padded tensor (bags, max tiles, dim + 1), last channel the mask."""
    dim = bags[0].shape[1] if bags else 0
    out = torch.zeros(len(bags), max((len(b) for b in bags), default=1), dim + 1)
    for i, bag in enumerate(bags):
        out[i, : len(bag), :dim] = bag
        out[i, : len(bag), dim] = 1.0
    return out


def slide_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """accuracy, balanced accuracy (mean recall over the classes present) and, for two classes, the AUC of the
    positive class's probability (NaN when the labels hold only one class)."""
    predicted = probs.argmax(axis=1)
    recalls = [float((predicted[labels == c] == c).mean()) for c in np.unique(labels)]
    out = {"accuracy": float((predicted == labels).mean()), "balanced_accuracy": float(np.mean(recalls))}
    if probs.shape[1] == 2:
        positive = labels == 1
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        ranks = rankdata(probs[:, 1])
        auc = (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg) if n_pos and n_neg else np.nan
        out["auc"] = float(auc)
    return out


class MilTask:
    """One site's slide-classification task: its training and test slides and a reusable network."""

    def __init__(
        self,
        config: MilTaskConfig,
        train: SlideSet | None,
        test: SlideSet | None,
        *,
        site: str,
        dim: int,
        seed: int = 0,
        dp_sgd: DpSgdSpec | None = None,
    ) -> None:
        for part in (train, test):
            wrong = sorted({bag.dim for bag in part.bags} - {dim}) if part is not None else []
            if wrong:
                raise TaskError(f"site {site}: slides with feature dimension {wrong}, the model takes {dim}")
        if dp_sgd is not None and config.norm == "batch":
            raise TaskError(
                "DP-SGD cannot train this MIL model: BatchNorm's statistics mix the slides of a step, so a slide's "
                "gradient is not its own. Use task.norm: layer (or none)"
            )
        self.config, self.site, self.seed, self.dim = config, site, seed, dim
        self.train_data, self.test_data = train, test
        self.model = build_mil_model(config, dim)
        self.dp = (
            None if dp_sgd is None else DpSgd(self.model, clip=dp_sgd.clip, noise_multiplier=dp_sgd.noise_multiplier)
        )
        self.memory = SiteMemory()

    def personal(self, arrays: Arrays) -> Arrays:
        return self.memory.personal(arrays)

    def _rate(self, config: Config) -> float:
        n = len(self.train_data) if self.train_data is not None else 1
        return min(1.0, int(config.get("batch_size", self.config.batch_size)) / max(n, 1))

    def privacy_spend(self, config: Config) -> list[Spend]:
        """What a round spends on the site's slides (DP-SGD, a slide the unit), for the ledger to check first."""
        if self.dp is None or self.train_data is None or len(self.train_data) == 0:
            return []
        return [self.dp.spend(self._rate(config), int(config.get("local_steps", 1)))]

    def _batch(self, bags: list[SlideBag], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = []
        for bag in bags:
            features = torch.from_numpy(bag.features)
            if len(bag) > self.config.max_tiles:
                features = features[torch.randperm(len(bag), generator=gen)[: self.config.max_tiles]]
            tensors.append(features)
        x = pack(tensors) if tensors else torch.zeros(0, 1, self.dim + 1)
        return x, torch.tensor([bag.label for bag in bags], dtype=torch.long)

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        data = self.train_data
        if data is None or len(data) == 0:
            raise TaskError(f"site {self.site} has no training slides")

        def fetch(idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            return self._batch([data.bags[int(i)] for i in idx], gen)

        return train_locally(
            self.model,
            arrays,
            config,
            self.memory,
            n=len(data),
            fetch=fetch,
            loss=lambda module, batch: nn.functional.cross_entropy(module(batch[0]), batch[1]),
            generator=torch.Generator().manual_seed(seed_of(self.seed, self.site, round, "train")),
            dp=self.dp,
            round=round,
            where=f"site {self.site}",
            lr=self.config.lr,
            batch_size=self.config.batch_size,
        )

    def _check(self, data: SlideSet) -> None:
        if len(data) == 0:
            raise TaskError(f"site {self.site}: no slides to score")
        wrong = sorted({bag.dim for bag in data.bags} - {self.dim})
        if wrong:
            raise TaskError(f"slides with feature dimension {wrong}; the model of site {self.site} takes {self.dim}")

    @torch.no_grad()
    def predict(self, arrays: Arrays, data: SlideSet) -> np.ndarray:
        """Class probabilities (slides, classes), every tile of every slide used."""
        self._check(data)
        load_arrays(self.model, self.memory.personal(arrays))
        self.model.eval()
        logits = [self.model(pack([torch.from_numpy(bag.features)])) for bag in data.bags]
        return torch.softmax(torch.cat(logits), dim=1).numpy()

    @torch.no_grad()
    def tile_scores(self, arrays: Arrays, bag: SlideBag, cls: int | None = None) -> np.ndarray:
        """One value per tile of ``bag``: its attention weight (attention pooling), or its score for class ``cls``
        less its mean score over the classes (top-k pooling; default: the class predicted for the slide)."""
        self._check(SlideSet((bag,)))
        load_arrays(self.model, self.memory.personal(arrays))
        self.model.eval()
        packed = pack([torch.from_numpy(bag.features)])
        scores = self.model.tile_scores(packed)[0]  # type: ignore[operator]
        if scores.ndim == 1:
            return scores.numpy()
        chosen = int(self.model(packed)[0].argmax()) if cls is None else cls
        return (scores[:, chosen] - scores.mean(dim=1)).numpy()

    def evaluate(self, arrays: Arrays, config: Config, round: int) -> EvalRes:
        data = self.test_data
        if data is None or len(data) == 0:
            raise TaskError(f"site {self.site} has no test slides")
        probs = self.predict(arrays, data)
        labels = data.labels()
        loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))
        return EvalRes(round=round, num_examples=len(data), loss=loss, metrics=slide_metrics(labels, probs))

    def score(self, arrays: Arrays, data: SlideSet) -> dict[str, float]:
        """accuracy, balanced_accuracy (and auc for two classes) of the model ``arrays`` on ``data``."""
        return slide_metrics(data.labels(), self.predict(arrays, data))
