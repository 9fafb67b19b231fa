"""A site's images in memory: a TensorDataset of (images, labels) that also names each image's file.

Images are kept as float16 (N, C, S, S) in [0, 1] (half the memory of float32, ample precision for pixels in
[0, 1]), or as float32 when the job's ``storage`` asks; the task turns a batch to float32 before the network sees
it. Being a TensorDataset, a batch is drawn by
indexing the tensors directly, without a per-image collate.

A training split may also carry each image's loss weight (a third tensor, :meth:`ImageSet.with_class_weights`):
the inverse frequency of its class among the split's images, for ``class_weighted`` jobs. Pooling several splits
(:meth:`ImageSet.concat`) drops them: they describe one split and are computed again for the pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from confide.errors import DataError

STORAGE = torch.float16  # the default
DTYPES = {"float16": torch.float16, "float32": torch.float32}


def inverse_frequency(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Each class's weight (n_classes,): images / (classes x the class's images); 1 for a class without images."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    if counts.size != n_classes:
        raise DataError(f"labels up to {counts.size - 1} do not fit {n_classes} classes")
    return np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 1.0)


class ImageSet(torch.utils.data.TensorDataset):
    """Images (N, C, S, S), class indices (N,), one file name per image and, optionally, a loss weight per image."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, files: Sequence[str], weights: torch.Tensor | None = None
    ) -> None:
        if images.ndim != 4 or images.shape[2] != images.shape[3]:
            raise DataError(f"images must be (N, C, S, S), got {tuple(images.shape)}")
        if labels.shape != (images.shape[0],) or len(files) != images.shape[0]:
            raise DataError(f"{images.shape[0]} images, {tuple(labels.shape)} labels and {len(files)} file names")
        if weights is not None and weights.shape != labels.shape:
            raise DataError(f"{images.shape[0]} images and {tuple(weights.shape)} loss weights")
        kept = images if images.dtype in DTYPES.values() else images.to(STORAGE)
        tensors = (kept, labels.to(torch.int64))
        super().__init__(*tensors, *(() if weights is None else (weights.to(torch.float32),)))
        self.files = tuple(files)

    @property
    def images(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def labels(self) -> torch.Tensor:
        return self.tensors[1]

    @property
    def weights(self) -> torch.Tensor | None:
        """Each image's loss weight, or None."""
        return self.tensors[2] if len(self.tensors) > 2 else None

    def with_class_weights(self, n_classes: int) -> ImageSet:
        """The same images, each weighted by the inverse frequency of its class in this set."""
        per_class = torch.tensor(inverse_frequency(self.labels.numpy(), n_classes), dtype=torch.float32)
        return ImageSet(self.images, self.labels, self.files, per_class[self.labels])

    @classmethod
    def from_arrays(
        cls, images: Sequence[np.ndarray], labels: Sequence[int], files: Sequence[str], storage: str = "float16"
    ) -> ImageSet:
        """Images (C, S, S) in [0, 1], held as ``storage`` (float16 or float32)."""
        if not images:
            raise DataError("no images given")
        if storage not in DTYPES:
            raise DataError(f"images are stored as float16 or float32, not {storage!r}")
        stacked = torch.from_numpy(np.stack(images).astype(np.float16 if storage == "float16" else np.float32))
        return cls(stacked, torch.as_tensor(np.asarray(labels, dtype=np.int64)), files)

    @classmethod
    def concat(cls, parts: Sequence[ImageSet]) -> ImageSet:
        if not parts:
            raise DataError("no splits to pool")
        shapes = {tuple(p.images.shape[1:]) for p in parts}
        if len(shapes) != 1:
            raise DataError(f"splits of different image shapes cannot be pooled: {sorted(shapes)}")
        return cls(
            torch.cat([p.images for p in parts]),
            torch.cat([p.labels for p in parts]),
            [f for p in parts for f in p.files],
        )

    def counts(self, n_classes: int) -> list[int]:
        return [int(c) for c in torch.bincount(self.labels, minlength=n_classes)]
