"""A site's images in memory: a TensorDataset of (images, labels) that also names each image's file.

Images are kept as float16 (N, C, S, S) in [0, 1] (half the memory of float32, ample precision for pixels in
[0, 1]); the task turns a batch to float32 before the network sees it. Being a TensorDataset, a batch is drawn by
indexing the tensors directly, without a per-image collate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from confide.errors import DataError

STORAGE = torch.float16


class ImageSet(torch.utils.data.TensorDataset):
    """Images (N, C, S, S), class indices (N,) and one file name per image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, files: Sequence[str]) -> None:
        if images.ndim != 4 or images.shape[2] != images.shape[3]:
            raise DataError(f"images must be (N, C, S, S), got {tuple(images.shape)}")
        if labels.shape != (images.shape[0],) or len(files) != images.shape[0]:
            raise DataError(f"{images.shape[0]} images, {tuple(labels.shape)} labels and {len(files)} file names")
        super().__init__(images.to(STORAGE), labels.to(torch.int64))
        self.files = tuple(files)

    @property
    def images(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def labels(self) -> torch.Tensor:
        return self.tensors[1]

    @classmethod
    def from_arrays(cls, images: Sequence[np.ndarray], labels: Sequence[int], files: Sequence[str]) -> ImageSet:
        if not images:
            raise DataError("no images given")
        stacked = torch.from_numpy(np.stack(images).astype(np.float16))
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
