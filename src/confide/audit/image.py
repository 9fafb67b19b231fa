"""The image audit: what one site's update of the image task gives away about the mammogram it trained on.

Each trial draws ``candidates`` images from the pool, picks one of them at random (the seeded experiment's choice)
and runs a fresh site that holds only that image, one round, under the configuration audited; the attacker reads
the decoded update. Two attacks run on it:

- identification: the attacker names the candidate whose simulated update matches best. Right in ``s`` of ``T``
  trials, against a chance of one in ``candidates``, this proves an epsilon (:func:`identification_epsilon`);
- inversion (on the first ``inversions`` trials): the reconstruction of :func:`invert`, scored by PSNR and SSIM
  against the true image, next to two baselines that need no update: the mean of the attacker's public images, and
  a public image drawn at random.

Every configuration sees the same trials (the same candidates and true images), so rows compare like with like.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from confide.audit.data import ImagePool
from confide.audit.result import AuditProgress, AuditResult, AuditRow, Pictures
from confide.audit.settings import AuditSettings
from confide.audit.site import AuditConfig, audit_configs, release_once
from confide.audit.threads import one_thread
from confide.kinds.images.dataset import ImageSet
from confide.privacy.audit_bounds import identification_epsilon
from confide.privacy.audit_inversion import (
    Recipe,
    infer_label,
    invert,
    matching_losses,
    observed_update,
    start_parameters,
)
from confide.privacy.audit_similarity import psnr, ssim


def _trials(settings: AuditSettings, pool_size: int) -> list[tuple[np.ndarray, int]]:
    """(candidate indices into the pool, position of the true one) for every trial, from the audit's seed."""
    rng = np.random.default_rng([settings.seed, 7])
    out = []
    for _ in range(settings.image.trials):
        chosen = rng.choice(pool_size, size=settings.image.candidates, replace=False)
        out.append((chosen, int(rng.integers(settings.image.candidates))))
    return out


def _one(images: ImageSet, index: int) -> ImageSet:
    return ImageSet(images.images[index : index + 1], images.labels[index : index + 1], (images.files[index],))


def public_images(pool: ImagePool, index: int) -> np.ndarray:
    """The attacker's public images when image ``index`` is the true one: every image of another patient."""
    others = np.array([patient != pool.patients[index] for patient in pool.patients])
    return pool.pixels[others]


def baselines(pool: ImagePool, truths: list[int]) -> dict[str, float]:
    """PSNR and SSIM that need no update: the mean public image, and a public image at random (averaged)."""
    out: dict[str, list[float]] = {"mean_psnr": [], "mean_ssim": [], "random_psnr": [], "random_ssim": []}
    for index in truths:
        truth = pool.pixels[index, 0]
        public = public_images(pool, index)[:, 0]
        mean = public.mean(axis=0)
        out["mean_psnr"].append(psnr(mean, truth))
        out["mean_ssim"].append(ssim(mean, truth))
        out["random_psnr"].append(float(np.mean([psnr(p, truth) for p in public])))
        out["random_ssim"].append(float(np.mean([ssim(p, truth) for p in public])))
    return {k: float(np.mean(v)) for k, v in out.items()}


def run_image_audit(settings: AuditSettings, pool: ImagePool, progress: AuditProgress) -> AuditResult:
    """Attack one site's update under each configuration of ``settings``, on trials drawn from ``pool``."""
    with one_thread():
        return _image_audit(settings, pool, progress)


def _image_audit(settings: AuditSettings, pool: ImagePool, progress: AuditProgress) -> AuditResult:
    began = time.perf_counter()
    s = settings.image
    workload, images, pixels = pool.workload, pool.images, pool.pixels
    initial = workload.initial(settings.seed)
    model = workload.network()  # the attacker's copy of the architecture
    model.train()
    start = start_parameters(model, initial.to_dict())
    names = tuple(start)
    recipe = Recipe(lr=s.lr, steps=s.steps)
    loss_fn = torch.nn.functional.cross_entropy
    entries = sum(int(v.numel()) for v in start.values())
    clip = s.lr * s.steps * math.sqrt(entries)  # the norm of Adam's steps: clipping alone leaves them as they are
    configs = audit_configs(settings, clip=clip)
    instruction = {"local_steps": s.steps, "lr": s.lr, "batch_size": 1}
    trials = _trials(settings, len(images))
    truths = [int(chosen[secret]) for chosen, secret in trials[: s.inversions]]
    progress.phase(f"image audit: {len(configs)} configurations x {s.trials} trials", len(configs) * s.trials)
    rows: list[AuditRow] = []
    pictures: dict[str, np.ndarray] = {}
    prior: np.ndarray | None = None
    for audit in configs:
        found, labels_right, scores = 0, 0, []
        ledger_eps = record_eps = math.inf
        for number, (chosen, secret) in enumerate(trials):
            index = int(chosen[secret])
            released = release_once(
                workload,
                _one(images, index),
                audit,
                initial=initial,
                config=instruction,
                seed=settings.seed,
                round=number + 1,
                delta=settings.delta,
            )
            ledger_eps, record_eps = released.ledger_epsilon, released.record_epsilon
            observed = observed_update(released.update, names)
            label = infer_label(released.update, names[-1])
            labels_right += int(label == int(pool.labels[index]))
            losses = matching_losses(
                model, start, pixels[chosen], label, loss_fn, recipe, observed, s.inversion.tau_end
            )
            found += int(np.argmin(losses) == secret)
            if number < s.inversions:
                public = public_images(pool, index)
                made = invert(model, start, observed, label, loss_fn, recipe, public, s.inversion)
                truth = pixels[index, 0]
                scores.append((psnr(made.image, truth), ssim(made.image, truth)))
                if number == 0:
                    pictures[audit.name] = made.image
                    prior = made.prior if audit.name == "none" else prior
            last = number + 1 == len(trials)
            progress.advance(1, status=f"{audit.name}: {found}/{len(trials)} identified" if last else None)
        rows.append(_row(settings, audit, ledger_eps, record_eps, found, labels_right, scores))
    notes = (
        f"data: {pool.source}; {len(images)} images of {s.image_size} px",
        f"each trial: a site holding one image trains {s.steps} Adam step(s) at lr {s.lr:g}; the attacker knows the "
        "model, this recipe and the update as decoded, and holds the other patients' images as its public ones",
        f"identification: {s.trials} trials, each among {s.candidates} candidates (chance {1 / s.candidates:.0%}); "
        "its epsilon is for adding or removing one image (group privacy from replacing one)",
        f"inversion: {s.inversions} trial(s), informed start from the best {s.inversion.top} public images, then "
        f"{s.inversion.iterations} steps of gradient matching with a total-variation prior",
    )
    truth0 = pixels[truths[0], 0] if truths else pixels[0, 0]
    return AuditResult(
        task="image",
        description=workload.describe(),
        rows=tuple(rows),
        notes=notes,
        settings={"seed": settings.seed, "delta": settings.delta, "confidence": settings.confidence, **vars(s)}
        | {"inversion": vars(s.inversion)},
        seconds=time.perf_counter() - began,
        baselines={**baselines(pool, truths), "chance": 1 / s.candidates},
        pictures=Pictures(truth0, pictures, prior) if truths else None,
    )


def _row(
    settings: AuditSettings,
    audit: AuditConfig,
    ledger_eps: float,
    record_eps: float,
    found: int,
    labels_right: int,
    scores: list[tuple[float, float]],
) -> AuditRow:
    s = settings.image
    lower = identification_epsilon(found, s.trials, s.candidates, settings.delta, confidence=settings.confidence)
    mean_psnr = float(np.mean([p for p, _ in scores])) if scores else math.nan
    mean_ssim = float(np.mean([q for _, q in scores])) if scores else math.nan
    return AuditRow(
        config=audit.name,
        label=audit.label,
        ledger_epsilon=ledger_eps,
        record_epsilon=record_eps,
        lower_epsilon=lower,
        attack="inversion + identification",
        metrics={
            "psnr": mean_psnr,
            "ssim": mean_ssim,
            "identified": found / s.trials,
            "label_right": labels_right / s.trials,
        },
        summary=f"PSNR {mean_psnr:.1f} dB, SSIM {mean_ssim:.2f}, identified {found}/{s.trials} of {s.candidates}",
    )
