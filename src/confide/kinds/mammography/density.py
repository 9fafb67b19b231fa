"""2D mammogram classification (breast density F/G/D or BI-RADS A-D, or abnormal vs normal) with a small CNN.

Images are padded square and resized to ``image_size`` (:func:`confide.kinds.mammography.reading.square`), one
channel in [0, 1]. The network is ``blocks`` conv blocks (two 3x3 convolutions, each followed by the chosen
normalisation and a ReLU, then 2x2 max pooling; channels ``width``, doubled per block up to 8x), global average
pooling and a linear head. Training is Adam on cross-entropy, weighted by the inverse class frequency of the site's
training images when ``class_weighted`` (never under DP-SGD, whose loss must not depend on statistics of the data
outside its accounting). Augmentation: random left-right flips per image and a small random shift per batch, from
the round's generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from confide.errors import DataError, TaskError
from confide.kinds.mammography.config import MammoTaskConfig
from confide.kinds.mammography.reading import MammoCase, resized
from confide.privacy.config import DpSgdSpec
from confide.privacy.spend import Spend
from confide.records import Arrays, Config, EvalRes, TrainRes
from confide.tasks.class_metrics import accuracy, balanced_accuracy, binary_auc, per_class_recall, quadratic_kappa
from confide.tasks.dp_sgd import DpSgd
from confide.tasks.local_rules import SiteMemory
from confide.tasks.loop import seed_of, train_locally
from confide.tasks.torch_io import load_arrays, module_arrays


@dataclass(frozen=True, eq=False)
class ImageData:
    """A site's images in memory: (N, 1, S, S) float32 in [0, 1], class indices (N,) int64, one id per image."""

    images: np.ndarray
    labels: np.ndarray
    ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 1 or self.images.shape[2] != self.images.shape[3]:
            raise DataError(f"images must be (N, 1, S, S), got {self.images.shape}")
        if self.images.dtype != np.float32 or self.labels.dtype != np.int64:
            raise DataError(f"images must be float32 and labels int64, got {self.images.dtype}, {self.labels.dtype}")
        if self.labels.shape != (self.images.shape[0],) or len(self.ids) != self.images.shape[0]:
            raise DataError(f"{self.images.shape[0]} images, {self.labels.shape} labels and {len(self.ids)} ids")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def counts(self, n_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=n_classes)

    @classmethod
    def from_cases(cls, cases: Sequence[MammoCase], side: int) -> ImageData:
        if not cases:
            raise DataError("no images given")
        images = np.stack([resized(case.image, side).pixels for case in cases])[:, None]
        labels = np.array([case.label for case in cases], dtype=np.int64)
        return cls(images.astype(np.float32, copy=False), labels, tuple(case.item for case in cases))

    @classmethod
    def concat(cls, parts: Sequence[ImageData]) -> ImageData:
        if not parts:
            raise DataError("no splits to pool")
        return cls(
            np.concatenate([p.images for p in parts]),
            np.concatenate([p.labels for p in parts]),
            tuple(i for p in parts for i in p.ids),
        )


def _norm(kind: str, channels: int) -> torch.nn.Module:
    if kind == "batch":
        return torch.nn.BatchNorm2d(channels)
    return torch.nn.GroupNorm(math.gcd(channels, 8), channels)


def build_classifier(config: MammoTaskConfig) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    channels_in = 1
    for block in range(config.blocks):
        channels = config.width * 2 ** min(block, 3)
        for conv_in in (channels_in, channels):
            layers += [
                torch.nn.Conv2d(conv_in, channels, 3, padding=1, bias=False),
                _norm(config.norm, channels),
                torch.nn.ReLU(),
            ]
        layers.append(torch.nn.MaxPool2d(2))
        channels_in = channels
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(channels_in, len(config.classes))]
    return torch.nn.Sequential(*layers)


def classifier_initial(config: MammoTaskConfig, seed: int) -> Arrays:
    """The untrained model, identical for the same config and seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return module_arrays(build_classifier(config))


def score_keys(config: MammoTaskConfig) -> tuple[str, ...]:
    """Every key :meth:`MammoTask.score` returns, the headline first (kappa, or AUC for abnormal vs normal)."""
    recalls = tuple(f"recall_{name}" for name in config.classes)
    if config.target == "abnormal":
        return ("auc", "balanced_accuracy", "accuracy", "kappa", *recalls)
    return ("kappa", "accuracy", "balanced_accuracy", *recalls)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flips = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flips[:, None, None, None], torch.flip(x, dims=(3,)), x)
    reach = max(1, x.shape[-1] // 16)
    dy, dx = (int(v) for v in torch.randint(-reach, reach + 1, (2,), generator=gen))
    padded = torch.nn.functional.pad(x, (reach, reach, reach, reach))
    side = x.shape[-1]
    return padded[..., reach + dy : reach + dy + side, reach + dx : reach + dx + side]


class MammoTask:
    """One site's mammography task: its training and test images and a reusable network."""

    def __init__(
        self,
        config: MammoTaskConfig,
        train: ImageData | None,
        test: ImageData | None,
        *,
        site: str,
        seed: int = 0,
        dp_sgd: DpSgdSpec | None = None,
    ) -> None:
        self.config = config
        self.train_data = train
        self.test_data = test
        self.site = site
        self.seed = seed
        self.n_classes = len(config.classes)
        for name, data in (("training", train), ("test", test)):
            if (
                data is not None
                and len(data)
                and (data.images.shape[-1] != config.image_size or data.labels.max() >= self.n_classes)
            ):
                raise TaskError(
                    f"site {site}: {name} images of side {data.images.shape[-1]} with labels up to "
                    f"{data.labels.max()} do not fit image_size {config.image_size} and {self.n_classes} classes"
                )
        self.model = build_classifier(config)
        self.dp = (
            None if dp_sgd is None else DpSgd(self.model, clip=dp_sgd.clip, noise_multiplier=dp_sgd.noise_multiplier)
        )
        self.memory = SiteMemory()
        self.class_weights: torch.Tensor | None = None
        if train is not None and config.class_weighted and self.dp is None:
            counts = train.counts(self.n_classes).astype(np.float64)
            weights = np.where(counts > 0, counts.sum() / (self.n_classes * np.maximum(counts, 1)), 1.0)
            self.class_weights = torch.tensor(weights, dtype=torch.float32)

    def personal(self, arrays: Arrays) -> Arrays:
        """The global model as this site uses it (its own normalisation layers under FedBN, controls removed)."""
        return self.memory.personal(arrays)

    def _sampling_rate(self, config: Config) -> float:
        n = len(self.train_data) if self.train_data is not None else 1
        return min(1.0, int(config.get("batch_size", self.config.batch_size)) / max(n, 1))

    def privacy_spend(self, config: Config) -> list[Spend]:
        if self.dp is None or self.train_data is None or len(self.train_data) == 0:
            return []
        return [self.dp.spend(self._sampling_rate(config), int(config.get("local_steps", 1)))]

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, y, weight=self.class_weights)

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        data = self.train_data
        if data is None or len(data) == 0:
            raise TaskError(f"site {self.site} has no training images")
        images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)

        def fetch(idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = images[idx], labels[idx]
            if self.config.augment and x.shape[0] > 0:
                x = _augment(x, gen)
            return x, y

        return train_locally(
            self.model,
            arrays,
            config,
            self.memory,
            n=len(data),
            fetch=fetch,
            loss=lambda module, batch: self._loss(module(batch[0]), batch[1]),
            generator=torch.Generator().manual_seed(seed_of(self.seed, self.site, round, "train")),
            dp=self.dp,
            round=round,
            where=f"site {self.site}",
            lr=self.config.lr,
            batch_size=self.config.batch_size,
        )

    @torch.no_grad()
    def probabilities(self, arrays: Arrays, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) of the model ``arrays`` (as this site uses it) for images (N, 1, S, S)."""
        load_arrays(self.model, self.memory.personal(arrays))
        self.model.eval()
        out = [
            torch.softmax(self.model(torch.from_numpy(images[start : start + 128])), dim=1).numpy()
            for start in range(0, images.shape[0], 128)
        ]
        return np.concatenate(out).astype(np.float64)

    def evaluate(self, arrays: Arrays, config: Config, round: int) -> EvalRes:
        data = self.test_data
        if data is None or len(data) == 0:
            raise TaskError(f"site {self.site} has no test images")
        probs = self.probabilities(arrays, data.images)
        loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(data)), data.labels], 1e-12, 1.0))))
        return EvalRes(round=round, num_examples=len(data), loss=loss, metrics=self._metrics(probs, data.labels))

    def score(self, arrays: Arrays, data: ImageData) -> dict[str, float]:
        """Every key of :func:`score_keys` on ``data``; a class absent from ``data`` has recall NaN, and so has
        AUC when ``data`` holds one class only."""
        if len(data) == 0:
            raise TaskError(f"site {self.site}: no images to score")
        return self._metrics(self.probabilities(arrays, data.images), data.labels)

    def _metrics(self, probs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        k = self.n_classes
        pred = probs.argmax(axis=1)
        recall = per_class_recall(truth, pred, k)
        scores = {
            "kappa": quadratic_kappa(truth, pred, k),
            "accuracy": accuracy(truth, pred, k),
            "balanced_accuracy": balanced_accuracy(truth, pred, k),
            **{f"recall_{name}": recall.get(i, float("nan")) for i, name in enumerate(self.config.classes)},
        }
        if self.config.target == "abnormal":
            scores["auc"] = binary_auc(truth, probs[:, 1])
        return {key: float(scores[key]) for key in score_keys(self.config)}
