"""Using a trained MIL model: what its file says, what a site keeps, class probabilities for new slides, and its
outputs on a test split for the report.

- ``model_io``: the classes, named by their labels in ``labels.csv`` (``0`` .. ``classes - 1``), and the tile
  feature dimension. No ``example_shape``: a slide holds any number of tiles, and an ONNX graph traced on one
  count would hold it fixed (``confide export --input-shape TILES,DIM+1`` still exports one).
- ``preprocessing``: none learnt from a site. Tile features are used as the feature extractor wrote them; the
  network normalises each tile's embedding itself (``norm: layer``) or with the statistics it holds in its own
  arrays (``norm: batch``; under FedBN each site's version of the model holds its own). No site statistic is
  needed, and ``preprocessing.json`` says so.
- ``predict``: a slide feature file (``.safetensors``, ``.h5``, ``.hdf5``, read as :mod:`confide.kinds.mil.slides`
  reads them), or a folder of them (a site folder's ``features/`` is searched when the folder itself holds none)
  -> a CSV with ``slide`` (the file's name without its suffix), one column ``probability_<class>`` per class,
  ``predicted`` (the class's label) and ``problem`` (why a slide could not be read or predicted: its
  probabilities stay empty, the other slides are still predicted). Every tile of a slide is used, as the task's
  ``evaluate`` uses them. Beside it, ``<name>_top_tiles.csv``: each slide's :data:`TOP_TILES` tiles with the
  highest score (attention pooling: the tile's attention weight; top-k pooling: its score for the predicted class
  less its mean score over the classes), with the tile's row in the file and its coordinates when the file has
  them.
- ``outputs``: class probabilities and the truth of a test split; the headline (:data:`HEADLINE`, balanced
  accuracy) on any subset, computed from each slide's hit and class so that the report's bootstrap is quick.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from confide.api import ClassOutputs, ModelIO, Outputs, Place, Prediction, PredictRequest, Preprocessing, device_of
from confide.errors import CaseError, DataError, TaskError
from confide.kinds.mil.config import MilTaskConfig
from confide.kinds.mil.metrics import slide_metrics
from confide.kinds.mil.model import pack, tile_scores
from confide.kinds.mil.slides import FEATURE_SUFFIXES, SlideBag, SlideSet, read_bag

HEADLINE = "balanced_accuracy"
"""The MIL task's headline metric, whatever the number of classes (``task.metric_keys`` puts it first)."""
TOP_TILES = 10
"""Tiles listed per slide in the top-tiles CSV."""


def class_names(config: MilTaskConfig) -> tuple[str, ...]:
    """The classes by their labels in ``labels.csv``: ``("0", "1", ...)``."""
    return tuple(str(c) for c in range(config.classes))


def probabilities(model: Any, bags: Sequence[SlideBag]) -> np.ndarray:
    """Class probabilities (slides, classes) in float32, one slide at a time with every tile, on the model's
    device (as the task's ``evaluate`` scores them)."""
    if not bags:
        raise TaskError("no slide to score")
    device = device_of(model)
    with torch.no_grad():
        logits = [model(pack([torch.from_numpy(bag.features)]).to(device)).float() for bag in bags]
        return torch.softmax(torch.cat(logits), dim=1).cpu().numpy()


def model_io(config: MilTaskConfig) -> ModelIO:
    dim = config.dim if config.dim is not None else "DIM"
    return ModelIO(
        inputs=f"one slide's tile features (tiles, {dim}) from its feature file, padded with a last channel that "
        f"marks the real tiles: (slides, tiles, {dim} + 1)",
        outputs="one logit per class (softmax: the slide's class probabilities); classes named by their labels",
        classes=class_names(config),
    )


def preprocessing(config: MilTaskConfig, place: Place) -> Preprocessing:
    norm = {
        "layer": "each tile's embedding is normalised by itself (layer norm)",
        "batch": "tile embeddings are normalised with the statistics held in the model's own arrays (batch norm; "
        "under FedBN, the site's own version of the model)",
        "none": "the tile embeddings are not normalised",
    }[config.norm]
    return Preprocessing(
        description=f"per slide, no site statistic: tile features are used as the feature extractor wrote them, "
        f"every tile of a slide at once; {norm}",
    )


# ---- prediction -------------------------------------------------------------------------------------------------


def _feature_files(folder: Path) -> list[Path]:
    return [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.suffix in FEATURE_SUFFIXES
    ]


def slide_files(source: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """(slide, file) for every slide feature file at ``source`` (a file, a folder of them, or a site folder whose
    ``features/`` holds them), by slide name; and the files left out because another of the same slide was taken
    (safetensors before HDF5, as a site's slides are read)."""
    if source.is_file():
        if source.suffix not in FEATURE_SUFFIXES:
            raise DataError(f"slide input {source}: expected a feature file ({', '.join(FEATURE_SUFFIXES)})")
        return [(source.stem, source)], []
    if not source.is_dir():
        raise DataError(f"slide input {source} does not exist")
    found = _feature_files(source)
    if not found and (source / "features").is_dir():
        found = _feature_files(source / "features")
    if not found:
        raise DataError(
            f"no slide feature file in {source} or in its features/ folder (looked for {', '.join(FEATURE_SUFFIXES)})"
        )
    chosen: dict[str, Path] = {}
    left_out: list[str] = []
    for path in sorted(found, key=lambda p: (p.stem, FEATURE_SUFFIXES.index(p.suffix))):
        if path.stem in chosen:
            left_out.append(f"{path.name} (slide {path.stem} is read from {chosen[path.stem].name})")
        else:
            chosen[path.stem] = path
    return sorted(chosen.items()), left_out


@dataclass(frozen=True)
class _Outcome:
    """One slide's prediction: its probabilities and top tiles, or the reason it has none."""

    probs: np.ndarray | None = None
    tiles: tuple[tuple[int, float, str, str], ...] = ()  # (row in the file, score, x, y)
    problem: str = ""


def _predict_slide(config: MilTaskConfig, model: Any, name: str, path: Path) -> _Outcome:
    try:
        bag = read_bag(path, slide=name, label=0, patient=name)
    except CaseError as exc:
        return _Outcome(problem=exc.reason)
    if config.dim is not None and bag.dim != config.dim:
        return _Outcome(problem=f"{path.name}: feature dimension {bag.dim}, the model takes {config.dim}")
    probs = probabilities(model, [bag])[0]
    scores = tile_scores(model, bag, int(np.argmax(probs)))
    top = np.argsort(-scores, kind="stable")[:TOP_TILES]
    coords = bag.coords
    tiles = tuple(
        (
            int(i),
            float(scores[i]),
            str(int(coords[i, 0])) if coords is not None else "",
            str(int(coords[i, 1])) if coords is not None else "",
        )
        for i in top
    )
    return _Outcome(probs=probs, tiles=tiles)


def output_files(out: Path) -> tuple[Path, Path]:
    """The predictions CSV and the top-tiles CSV for ``request.out``: ``predictions.csv`` and ``top_tiles.csv`` in
    a folder that exists, else the file named and ``<its name>_top_tiles.csv`` beside it."""
    if out.is_dir():
        return out / "predictions.csv", out / "top_tiles.csv"
    return out, out.with_name(f"{out.stem}_top_tiles.csv")


def predict(config: MilTaskConfig, model: Any, request: PredictRequest) -> Prediction:
    """Class probabilities for every slide at ``request.inputs``, written as CSV (see the module docstring)."""
    classes = class_names(config)
    source = Path(request.inputs)
    slides, left_out = slide_files(source)
    out, tiles_out = output_files(Path(request.out))
    out.parent.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    model.eval()
    with (
        open(out, "w", newline="", encoding="utf-8") as handle,
        open(tiles_out, "w", newline="", encoding="utf-8") as tiles_handle,
    ):
        writer, tiles_writer = csv.writer(handle), csv.writer(tiles_handle)
        writer.writerow(["slide", *(f"probability_{c}" for c in classes), "predicted", "problem"])
        tiles_writer.writerow(["slide", "rank", "tile", "score", "x", "y"])
        for name, path in slides:  # one slide in memory at a time
            got = _predict_slide(config, model, name, path)
            if got.probs is None:
                failed.append(f"{name}: {got.problem}")
                writer.writerow([name, *[""] * (len(classes) + 1), got.problem])
                continue
            predicted = classes[int(np.argmax(got.probs))]
            writer.writerow([name, *(f"{float(p):.6f}" for p in got.probs), predicted, ""])
            for rank, (tile, score, x, y) in enumerate(got.tiles, start=1):
                tiles_writer.writerow([name, rank, tile, f"{score:.6g}", x, y])
    if len(failed) == len(slides):
        raise DataError(f"no slide at {source} could be predicted; first: {failed[0]} (each is named in {out})")
    what = "attention weight" if config.pooling == "attention" else "score for the predicted class less its mean"
    notes = [
        f"classes are named by their labels ({', '.join(classes)}); every tile of each slide used",
        f"each slide's top {TOP_TILES} tiles by {what}: {tiles_out.name}",
    ]
    if failed:
        notes.append(f"{len(failed)} slide(s) not predicted; first: {failed[0]}")
    if left_out:
        notes.append(f"{len(left_out)} file(s) left out; first: {left_out[0]}")
    if request.statistics:
        notes.append("the statistics given are not used: tile features need no site statistic")
    return Prediction(files=(out, tiles_out), count=len(slides) - len(failed), notes=tuple(notes))


# ---- the report's outputs ---------------------------------------------------------------------------------------


def balanced_accuracy(truth: np.ndarray, hits: np.ndarray, classes: int) -> float:
    """The mean over the classes present in ``truth`` of the share of their slides predicted right (``hits``
    0/1), as :func:`confide.kinds.mil.metrics.slide_metrics` computes it; NaN without slides."""
    counts = np.bincount(truth, minlength=classes)
    right = np.bincount(truth, weights=hits, minlength=classes)
    present = counts > 0
    return float(np.mean(right[present] / counts[present])) if present.any() else float("nan")


def headline_scores(
    metric: str, truth: np.ndarray, probs: np.ndarray
) -> tuple[Callable[[np.ndarray], float], np.ndarray | None]:
    """``metric`` on the slides at any indices, and, where it is the mean of a per-slide score (accuracy), those
    scores: each slide's hit, which the report's bootstrap resamples all at once."""
    hits = (probs.argmax(axis=1) == truth).astype(np.float64)
    if metric == "accuracy":
        return (lambda indices: float(hits[indices].mean())), hits
    if metric == "balanced_accuracy":
        return (lambda indices: balanced_accuracy(truth[indices], hits[indices], probs.shape[1])), None
    return (lambda indices: float(slide_metrics(truth[indices], probs[indices])[metric])), None


def outputs(config: MilTaskConfig, model: Any, data: Any) -> Outputs:
    """Class probabilities on a SlideSet, with the headline on any subset of its slides."""
    if not isinstance(data, SlideSet):
        raise TaskError(f"the MIL task reads SlideSets, got {type(data).__name__}")
    truth = data.labels()
    probs = probabilities(model, data.bags).astype(np.float64) if len(data) else np.zeros((0, config.classes))
    headline, per_example = headline_scores(HEADLINE, truth, probs)
    view = ClassOutputs(truth, probs, class_names(config))
    return Outputs(n=len(truth), headline=headline, view=view, per_example=per_example)
