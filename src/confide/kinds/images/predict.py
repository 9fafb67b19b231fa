"""Using a trained image classifier: what its file says, what a site keeps, class probabilities for new images,
and its outputs on a test split for the report.

- ``model_io``: the class names in output order, the input size and channels.
- ``preprocessing``: none learnt from a site. Every image is read as in training (pixels scaled to [0, 1] by the
  file's own depth or window, converted to the job's channels, padded square and resized) and the network
  standardises each image by itself (``intensity: standardize``; ``raw`` keeps the [0, 1] pixels): no site statistic
  is needed, and ``preprocessing.json`` says so.
- ``predict``: an image file, or a folder of them (searched recursively, hidden entries skipped; PNG, JPEG, TIFF,
  BMP, PGM/PPM, DICOM) -> a CSV with ``file`` (relative to the folder), one column per class name holding its
  probability, and ``predicted``. A file that cannot be read is listed in the prediction's notes and keeps empty
  probabilities with its reason in ``problem``.
- ``outputs``: class probabilities and the truth; the headline metric as :func:`image_scores` computes it.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from confide.api import ClassOutputs, ModelIO, Outputs, Place, Prediction, PredictRequest, Preprocessing, device_of
from confide.errors import DataError, TaskError
from confide.kinds.images.config import ImageTaskConfig
from confide.kinds.images.dataset import ImageSet
from confide.kinds.images.metrics import image_scores, metric_keys
from confide.kinds.images.pixels import DICOM_SUFFIXES, RASTER_SUFFIXES, load_image
from confide.kinds.images.site import require_classes

BATCH = 64


def probabilities(model: Any, images: torch.Tensor) -> np.ndarray:
    """Class probabilities (N, classes) for images (N, C, S, S), in batches of :data:`BATCH` on the model's device,
    in float32 (as the task's ``evaluate`` takes them)."""
    device = device_of(model)
    parts = [
        torch.softmax(model(images[start : start + BATCH].to(torch.float32).to(device)).float(), dim=1).cpu()
        for start in range(0, images.shape[0], BATCH)
    ]
    return torch.cat(parts).numpy().astype(np.float64)


def model_io(config: ImageTaskConfig) -> ModelIO:
    return ModelIO(
        inputs=f"images ({config.channels} channel(s), padded square and resized to {config.image_size} px, pixels "
        "in [0, 1])",
        outputs="one logit per class (softmax: the class probabilities)",
        classes=config.classes,
        example_shape=(config.channels, config.image_size, config.image_size),
    )


def preprocessing(config: ImageTaskConfig, place: Place) -> Preprocessing:
    per_image = (
        "the network standardises each image by itself (its own mean and standard deviation)"
        if config.intensity == "standardize"
        else "the network takes the [0, 1] pixels as they are (intensity: raw)"
    )
    return Preprocessing(
        description=f"per image, no site statistic: pixels scaled to [0, 1] by the file's own depth or window, "
        f"{config.channels} channel(s), padded square and resized to {config.image_size} px; {per_image}",
    )


def image_files(root: Path) -> list[Path]:
    """The image files at ``root`` (a file, or a folder searched recursively, hidden entries skipped)."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"image input {root} does not exist")
    suffixes = RASTER_SUFFIXES | (DICOM_SUFFIXES - {""})
    found = [
        path
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
        and path.suffix.lower() in suffixes
    ]
    if not found:
        raise DataError(f"no image file in {root} (looked for {', '.join(sorted(suffixes))})")
    return found


def predict(config: ImageTaskConfig, model: Any, request: PredictRequest) -> Prediction:
    """Class probabilities for every image at ``request.inputs``, written as the CSV ``request.out``."""
    classes = require_classes(config, "predicting")
    source = Path(request.inputs)
    files = image_files(source)
    base = source if source.is_dir() else source.parent
    names = [str(path.relative_to(base)) for path in files]
    probs: list[np.ndarray | None] = [None] * len(files)
    reasons: list[str] = [""] * len(files)
    batch: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if not batch:
            return
        images = torch.from_numpy(np.stack([image for _, image in batch]))
        with torch.no_grad():
            got = probabilities(model, images)
        for (k, _), p in zip(batch, got, strict=True):
            probs[k] = p
        batch.clear()

    for k, path in enumerate(files):
        try:
            batch.append((k, load_image(path, config.channels, config.image_size)))
        except DataError as exc:
            reasons[k] = str(exc)
        if len(batch) == BATCH:
            flush()
    flush()
    out = Path(request.out)
    if out.is_dir():
        out = out / "predictions.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", *classes, "predicted", "problem"])
        for name, p, reason in zip(names, probs, reasons, strict=True):
            cells = [f"{float(v):.6f}" for v in p] + [classes[int(np.argmax(p))]] if p is not None else []
            writer.writerow([name, *(cells or [""] * (len(classes) + 1)), reason])
    failed = [f"{name}: {reason}" for name, reason in zip(names, reasons, strict=True) if reason]
    if len(failed) == len(files):
        raise DataError(f"no image at {source} could be read; first: {failed[0]}")
    notes = (f"{len(failed)} file(s) not read; first: {failed[0]}",) if failed else ()
    return Prediction(files=(out,), count=len(files) - len(failed), notes=notes)


def outputs(config: ImageTaskConfig, model: Any, data: Any) -> Outputs:
    """Class probabilities on an ImageSet, with the headline metric on any subset of its images."""
    if not isinstance(data, ImageSet):
        raise TaskError(f"the image task reads ImageSets, got {type(data).__name__}")
    classes = require_classes(config, "the report")
    with torch.no_grad():
        probs = probabilities(model, data.images)
    truth = data.labels.numpy().astype(np.int64)
    metric = metric_keys(config.ordinal)[0]

    def headline(indices: np.ndarray) -> float:
        return float(image_scores(truth[indices], probs[indices], classes, ordinal=config.ordinal)[metric])

    return Outputs(n=len(truth), headline=headline, view=ClassOutputs(truth, probs, tuple(classes)))
