"""Membership inference on a table task with canaries: the attack of a one-run privacy audit.

An auditor plants canary rows in a site's training rows, each included independently with probability 1/2
(Steinke, Nasr & Jagielski 2023). The site trains once and sends its update; the attacker, who knows the model it
sent and every canary but not which were included, scores each canary by how much the update lowered its loss, and
names the highest scores "in" and the lowest "out". :mod:`confide.privacy.audit_bounds` turns the right guesses into
an epsilon the update cannot have, and the scores into an AUC.

Canaries are made to be noticed, as an audit's should be (a bound holds for any canary; a weak canary only makes it
loose): each is one feature set ``scale`` standard deviations from the site's mean with every other feature at the
mean (a "Dirac" canary: its gradient lives in few coordinates, so canaries of different features barely interfere),
and its label is the one the site's own data would make *less* likely in a round without canaries (read from a
reference round the auditor runs on the site's rows alone). A canary that was not trained on then loses ground, one
that was gains it. The rows are planted after the site's standardisation, in the units the task trains on.
"""

from __future__ import annotations

import numpy as np
import torch

from confide.records import Arrays


def dirac_canaries(features: int, count: int, scale: float) -> np.ndarray:
    """``count`` canary rows (count, features): canary ``i`` is ``+scale`` (first pass over the features) or
    ``-scale`` (second pass, and so on alternately) in feature ``i mod features``, 0 elsewhere."""
    if features < 1 or count < 1 or not scale > 0:
        raise ValueError(f"canaries need features >= 1, count >= 1 and scale > 0, got {features}, {count}, {scale}")
    rows = np.zeros((count, features), dtype=np.float32)
    for i in range(count):
        rows[i, i % features] = scale if (i // features) % 2 == 0 else -scale
    return rows


def draw_inclusion(rng: np.random.Generator, count: int) -> np.ndarray:
    """Which canaries the site trains on: each independently with probability 1/2."""
    return rng.random(count) < 0.5


@torch.no_grad()
def binary_losses(model: torch.nn.Module, arrays: Arrays, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The binary cross-entropy of every row under the model ``arrays`` (one logit per row)."""
    model.load_state_dict({name: torch.from_numpy(np.array(value)) for name, value in arrays.items()})
    model.eval()
    logits = model(torch.from_numpy(np.asarray(rows, dtype=np.float32)))[:, 0]
    target = torch.from_numpy(np.asarray(labels, dtype=np.float32))
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").numpy()


def added(start: Arrays, update: Arrays) -> Arrays:
    """The model after the update (start plus update, for every array of the start)."""
    return Arrays.from_dict({name: start[name] + np.asarray(update[name], dtype=start[name].dtype) for name in start})


def labels_against_drift(model: torch.nn.Module, start: Arrays, reference: Arrays, rows: np.ndarray) -> np.ndarray:
    """For each canary, the label (0 or 1) whose loss the ``reference`` model (a round on the site's rows alone)
    raises more: the data pulls the model away from it, so only training on the canary can pull it back."""
    rise = [
        binary_losses(model, reference, rows, np.full(len(rows), label))
        - binary_losses(model, start, rows, np.full(len(rows), label))
        for label in (0.0, 1.0)
    ]
    return (rise[1] > rise[0]).astype(np.float32)


def loss_drop_scores(
    model: torch.nn.Module, start: Arrays, released: Arrays, rows: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """How much the released update lowered each canary's loss: the attack's membership score."""
    return binary_losses(model, start, rows, labels) - binary_losses(model, released, rows, labels)
