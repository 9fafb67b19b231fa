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
from torch import nn

from confide.errors import TaskError
from confide.kinds.mil.config import MilTaskConfig
from confide.kinds.mil.slides import SlideBag


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


def pack(bags: list[torch.Tensor]) -> torch.Tensor:
    """Bags of tile features (tiles_i, dim) as one padded tensor (bags, max tiles, dim + 1), last channel the mask."""
    dim = bags[0].shape[1] if bags else 0
    out = torch.zeros(len(bags), max((len(b) for b in bags), default=1), dim + 1)
    for i, bag in enumerate(bags):
        out[i, : len(bag), :dim] = bag
        out[i, : len(bag), dim] = 1.0
    return out


@torch.no_grad()
def tile_scores(model: nn.Module, bag: SlideBag, cls: int | None = None) -> np.ndarray:
    """One value per tile of ``bag``: its attention weight (attention pooling), or its score for class ``cls``
    less its mean score over the classes (top-k pooling; default: the class predicted for the slide)."""
    takes = next(m.in_features for m in model.modules() if isinstance(m, nn.Linear))  # the tile encoder's input
    if bag.dim != takes:
        raise TaskError(f"slide {bag.slide} has feature dimension {bag.dim}, the model takes {takes}")
    model.eval()
    device = next(model.parameters()).device
    packed = pack([torch.from_numpy(bag.features)]).to(device)
    scores = model.tile_scores(packed)[0]  # type: ignore[operator]
    if scores.ndim == 1:
        return scores.cpu().numpy()
    chosen = int(model(packed)[0].argmax()) if cls is None else cls
    return (scores[:, chosen] - scores.mean(dim=1)).cpu().numpy()
