"""Image classification as a :class:`~confide.api.TaskKind`, written on the public API like a user's own task.

- ``prepare`` (simulation only): generates the synthetic grades into ``data.root`` when the job asks and it is
  absent; completes ``classes`` from every site's ``labels.csv`` when the job leaves them out, and says so (a
  warning with the line to add to the job, and a note in the report). The MIAS folder needs its classes in the job.
- ``sites``: the MIAS folder's simulated sites, else ``data.root``'s sub-folders; ``read_site``:
  :func:`confide.kinds.images.site.read_site`.
- ``build_model``: :func:`confide.kinds.images.model.build_network`; a job without ``classes`` is refused here at a
  deployed server, which reads no data.
- ``augment``: each training batch changed at random (:mod:`confide.kinds.images.augment`) when ``augment`` is
  on, drawn from the round's job-seeded generator; ``loss``: cross-entropy of the batch, weighted by class under
  ``class_weighted`` (each site's training images carry their weights; ``pool`` weighs the pooled images afresh),
  which DP-SGD refuses (``dp_sgd_refusal``).
- ``evaluate``: :func:`confide.kinds.images.metrics.image_scores` on class probabilities, in batches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from confide.api import TaskKind, device_of
from confide.errors import ConfigError, TaskError
from confide.kinds.images.augment import augment_batch, augment_spec, flip_and_shift_batch
from confide.kinds.images.config import ImageTaskConfig
from confide.kinds.images.dataset import ImageSet
from confide.kinds.images.labels import LABELS_FILE, discover_classes
from confide.kinds.images.metrics import image_scores, metric_keys
from confide.kinds.images.mias import is_mias
from confide.kinds.images.model import build_network
from confide.kinds.images.predict import model_io, outputs, predict, preprocessing
from confide.kinds.images.site import read_site, require_classes, sites
from confide.kinds.images.synthetic import write_grades

log = logging.getLogger(__name__)
EVAL_BATCH = 256


def prepare(config: ImageTaskConfig, root: Path) -> ImageTaskConfig:
    """The config completed from a simulation's data (see the module docstring)."""
    spec = config.synthetic
    if spec is not None and not Path(root).exists():
        write_grades(
            Path(root),
            sites=spec.sites,
            patients=spec.patients,
            size=spec.size,
            test_fraction=spec.test_fraction,
            fmt=spec.format,
            seed=spec.seed,
        )
    if config.classes is not None:
        return config
    if is_mias(Path(root)):
        raise ConfigError(
            f"data.root {root} is the MIAS folder: give task.classes, [F, G, D] (background tissue; ordinal: true) "
            "or [normal, abnormal]"
        )
    found, files = discover_classes(Path(root))
    log.warning(
        "task.classes is not in the job: read %s from %d %s files; add this line to the task to fix them "
        "(a deployment needs it%s): classes: [%s]",
        list(found),
        len(files),
        LABELS_FILE,
        ", and ordinal grades follow its order" if config.ordinal else "",
        ", ".join(found),
    )
    return config.with_classes(found, read_from_data=True)


def build_model(config: ImageTaskConfig) -> torch.nn.Module:
    classes = require_classes(config, "the server (a deployment's server reads no data)")
    return build_network(config, len(classes))


def _batch_images(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32)


def _check_shape(config: ImageTaskConfig, images: torch.Tensor) -> None:
    """Images (N, C, S, S) must be the job's channels and size (read_site makes them so)."""
    if images.ndim != 4 or images.shape[1] != config.channels or images.shape[-1] != config.image_size:
        raise TaskError(
            f"images of shape {tuple(images.shape)} do not fit channels {config.channels} and image_size "
            f"{config.image_size} (read them through the task's read_site)"
        )


def augment(config: ImageTaskConfig, batch: Any, generator: torch.Generator) -> Any:
    """A training batch ``(images, labels[, weights])`` with its images changed at random (when ``augment`` is on)."""
    x, y, *weights = batch
    x = _batch_images(x)
    if not config.augment:
        return (x, y, *weights)
    if config.augmentation == "flip_batch_shift":
        return (flip_and_shift_batch(x, generator), y, *weights)
    spec = augment_spec(config.image_size, intensity=config.intensity == "raw")
    return (augment_batch(x, spec, generator), y, *weights)


def loss(config: ImageTaskConfig, model: Any, batch: Any) -> torch.Tensor:
    """The batch's cross-entropy; under ``class_weighted``, each image's term weighted by its class's weight and the
    sum divided by the batch's total weight (torch's class-weighted cross-entropy)."""
    x, y, *weights = batch
    _check_shape(config, x)
    logits = model(_batch_images(x))
    if not config.class_weighted:
        return torch.nn.functional.cross_entropy(logits, y)
    if not weights:
        raise TaskError("class_weighted: the training images carry no loss weights (read them through read_site)")
    per_class = torch.ones(logits.shape[1], dtype=weights[0].dtype, device=logits.device)
    per_class[y] = weights[0].to(logits.device)  # each image carries its class's weight
    return torch.nn.functional.cross_entropy(logits, y, weight=per_class)


def dp_sgd_refusal(config: ImageTaskConfig) -> str | None:
    if config.class_weighted:
        return (
            "class_weighted: the loss weights come from the site's class counts, a statistic of its data outside "
            "the privacy accounting, and weigh each image by the others' labels; set class_weighted: false"
        )
    return None


def probabilities(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """Class probabilities (N, classes) of ``model`` for ``images`` (N, C, S, S), in batches, on its device."""
    device = device_of(model)
    parts = [
        torch.softmax(model(_batch_images(images[start : start + EVAL_BATCH]).to(device)).float(), dim=1).cpu()
        for start in range(0, images.shape[0], EVAL_BATCH)
    ]
    return torch.cat(parts).numpy().astype(np.float64)


def evaluate(config: ImageTaskConfig, model: Any, data: Any) -> dict[str, float]:
    if not isinstance(data, ImageSet):
        raise TaskError(f"the image task scores ImageSets, got {type(data).__name__}")
    classes = require_classes(config, "scoring")
    _check_shape(config, data.images)
    probs = probabilities(model, data.images)
    return image_scores(data.labels.numpy(), probs, classes, ordinal=config.ordinal)


def pool(config: ImageTaskConfig, parts: Any) -> ImageSet:
    """The sites' training images as one set, weighted by class over the pool under ``class_weighted``."""
    pooled = ImageSet.concat(list(parts))
    if config.class_weighted:
        return pooled.with_class_weights(len(require_classes(config, "pooling")))
    return pooled


def describe(config: ImageTaskConfig) -> str:
    classes = f"{len(config.classes)} classes" if config.classes else "classes read from the data"
    kind = "ordinal " if config.ordinal else ""
    return (
        f"image classification: {config.model} ({config.norm} norm, width {config.first_width()}), "
        f"{config.image_size} px, {config.channels} channel(s), {kind}{classes}, "
        f"augmentation {config.augmentation if config.augment else 'off'}"
        + (", class-weighted loss" if config.class_weighted else "")
    )


def image_kind(config: ImageTaskConfig) -> TaskKind[ImageTaskConfig]:
    """The task kind for ``config``: its metrics (headline first) depend on whether the classes are ordinal."""
    return TaskKind(
        read_site=read_site,
        build_model=build_model,
        evaluate=evaluate,
        metrics=metric_keys(config.ordinal),
        fields=ImageTaskConfig,
        loss=loss,
        sites=sites,
        pool=pool,
        augment=augment,
        prepare=prepare,
        dp_sgd_refusal=dp_sgd_refusal,
        describe=describe(config),
        model_io=model_io,
        preprocessing=preprocessing,
        predict=predict,
        outputs=outputs,
    )
