"""Gradient inversion: what an attacker who sees one site's update learns about the image it was trained on.

The attacker (the server, or anyone who reads the update on its way) knows the model it sent, the site's training
recipe (the loss, Adam's learning rate and betas, the local steps, a batch of one image) and the update as it left
the site, after the site's privacy filters. It looks for an image whose *simulated* local training gives an update
that matches the observed one: cosine-similarity matching with a total-variation prior (Geiping et al. 2020,
"Inverting gradients"). Each simulated step is Adam's, whose first step is ``-lr m / (sqrt(v) + eps)`` with
``m = g`` and ``v = g^2``: nearly ``-lr sign(g)``. A sign has no useful derivative, so the simulation replaces
``sqrt(v)`` by ``sqrt(v + tau^2)`` (tau a share of each array's mean absolute gradient): a smooth surrogate that
tends to Adam's step as tau shrinks.

The attack also uses a prior that a real attacker has: public images of the same kind (an open mammography set).
It ranks them by how well their simulated update matches the observed one and starts from the mean of the best
few (an informed start, as in the informed adversary of Balle et al. 2022); it then refines that image by gradient
matching and keeps the refinement only where it matches the update better. The label comes from the update of the
classifier's last bias (iDLG, Zhao et al. 2020: the true class is the one whose logit the step raises).

:func:`matching_losses` also serves identification: given a few candidate images, one of which the site trained on,
the attacker names the best match (:mod:`confide.privacy.audit_bounds` turns its success rate into an epsilon).
Everything here is the attacker's arithmetic, on a copy of the model: nothing of it runs at a site.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call

from confide.records import SparseArrays, Update

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Recipe:
    """The site's local training as the attacker knows it: Adam at ``lr`` for ``steps`` steps on one image."""

    lr: float
    steps: int = 1
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.steps < 1:
            raise ValueError(f"a training recipe needs lr > 0 and steps >= 1, got {self.lr}, {self.steps}")


@dataclass(frozen=True)
class InversionSettings:
    """How hard the attacker works: ``iterations`` of Adam (step ``lr``) on the image, the weight of the
    total-variation prior, the surrogate's tau from ``tau_start`` to ``tau_end`` (a share of each array's mean
    absolute gradient), and the ``top`` public images whose mean starts the search (0: start from grey)."""

    iterations: int = 100
    lr: float = 0.003
    tv: float = 1e-3
    tau_start: float = 0.3
    tau_end: float = 0.1
    top: int = 4


@dataclass(frozen=True)
class Observed:
    """The update as the attacker reads it: one flat vector over the model's trainable arrays, and which entries
    were sent (``None``: all of them; a sparse update sends some)."""

    names: tuple[str, ...]
    vector: torch.Tensor
    sent: torch.Tensor | None


@dataclass(frozen=True)
class Reconstruction:
    image: np.ndarray  # (S, S) in [0, 1]: the attack's answer
    prior: np.ndarray  # the informed start (mean of the best-matching public images)
    loss: float  # matching loss of ``image`` (1 - cosine)
    prior_loss: float
    label: int


def observed_update(update: Update, names: Sequence[str]) -> Observed:
    """The update's entries for the arrays ``names``, in that order (entries a sparse update left out read 0)."""
    sent: list[torch.Tensor] | None = None
    if isinstance(update, SparseArrays):
        dense = update.densify()
        sent = []
        for name in names:
            mask = np.zeros(int(np.prod(update.shape(name))), dtype=bool)
            mask[update.indices[name]] = True
            sent.append(torch.from_numpy(mask))
        values = [dense[name] for name in names]
    else:
        values = [update[name] for name in names]
    vector = torch.cat([torch.from_numpy(np.array(v, dtype=np.float32).reshape(-1)) for v in values])
    return Observed(tuple(names), vector, None if sent is None else torch.cat(sent))


def infer_label(update: Update, head_bias: str) -> int:
    """The class whose bias the update raised most (the true class, for one image and one step of training)."""
    values = update.densify()[head_bias] if isinstance(update, SparseArrays) else update[head_bias]
    return int(np.argmax(np.asarray(values)))


def start_parameters(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The model's trainable arrays as the server sent them, as leaves that gradients can flow from."""
    return {
        name: torch.tensor(np.asarray(arrays[name]), dtype=torch.float32, requires_grad=True)
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def simulated_update(
    model: torch.nn.Module,
    start: dict[str, torch.Tensor],
    image: torch.Tensor,
    label: torch.Tensor,
    loss_fn: Loss,
    recipe: Recipe,
    tau: float,
    *,
    create_graph: bool,
) -> torch.Tensor:
    """The flat update that ``recipe`` (Adam with the smooth surrogate) would make on ``image`` (1, C, S, S)."""
    beta1, beta2 = recipe.betas
    names = list(start)
    weights = dict(start)
    first = {n: torch.zeros_like(w) for n, w in weights.items()}
    second = {n: torch.zeros_like(w) for n, w in weights.items()}
    for step in range(1, recipe.steps + 1):
        loss = loss_fn(functional_call(model, weights, (image,)), label)
        grads = torch.autograd.grad(loss, [weights[n] for n in names], create_graph=create_graph)
        moved = {}
        for name, grad in zip(names, grads, strict=True):
            scale = tau * float(grad.detach().abs().mean()) + 1e-12
            first[name] = beta1 * first[name] + (1 - beta1) * grad
            second[name] = beta2 * second[name] + (1 - beta2) * grad * grad
            m_hat = first[name] / (1 - beta1**step)
            v_hat = second[name] / (1 - beta2**step)
            moved[name] = weights[name] - recipe.lr * m_hat / torch.sqrt(v_hat + scale**2)
        weights = moved
    return torch.cat([(weights[n] - start[n]).reshape(-1) for n in names])


def matching_loss(simulated: torch.Tensor, observed: Observed) -> torch.Tensor:
    """1 - cosine similarity between a simulated and the observed update, over the entries that were sent."""
    a, b = (
        (simulated, observed.vector)
        if observed.sent is None
        else (simulated[observed.sent], observed.vector[observed.sent])
    )
    return 1 - torch.nn.functional.cosine_similarity(a, b, dim=0, eps=1e-20)


def total_variation(image: torch.Tensor) -> torch.Tensor:
    return (image[..., 1:, :] - image[..., :-1, :]).abs().mean() + (image[..., :, 1:] - image[..., :, :-1]).abs().mean()


def matching_losses(
    model: torch.nn.Module,
    start: dict[str, torch.Tensor],
    images: np.ndarray,
    label: int,
    loss_fn: Loss,
    recipe: Recipe,
    observed: Observed,
    tau: float,
) -> np.ndarray:
    """The matching loss of each of ``images`` (N, C, S, S): how far its simulated update is from the observed."""
    target = torch.tensor([label])
    out = np.empty(len(images))
    for i, image in enumerate(images):
        x = torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32))
        sim = simulated_update(model, start, x, target, loss_fn, recipe, tau, create_graph=False)
        out[i] = float(matching_loss(sim.detach(), observed))
    return out


def invert(
    model: torch.nn.Module,
    start: dict[str, torch.Tensor],
    observed: Observed,
    label: int,
    loss_fn: Loss,
    recipe: Recipe,
    public: np.ndarray,
    settings: InversionSettings,
) -> Reconstruction:
    """Reconstruct the image (1 channel) behind ``observed``: the informed start from the ``public`` images
    (N, 1, S, S), then gradient matching with the total-variation prior."""
    side = int(public.shape[-1])
    target = torch.tensor([label])
    if settings.top > 0 and len(public):
        ranked = np.argsort(matching_losses(model, start, public, label, loss_fn, recipe, observed, settings.tau_end))
        prior = public[ranked[: settings.top]].mean(axis=0).astype(np.float32)
    else:
        prior = np.full((1, side, side), 0.5, dtype=np.float32)
    x = torch.from_numpy(prior[None].copy()).requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=settings.lr)
    taus = np.geomspace(settings.tau_start, settings.tau_end, max(settings.iterations, 1))
    for tau in taus[: settings.iterations]:
        optimiser.zero_grad(set_to_none=True)
        sim = simulated_update(model, start, x, target, loss_fn, recipe, float(tau), create_graph=True)
        objective = matching_loss(sim, observed) + settings.tv * total_variation(x)
        (x.grad,) = torch.autograd.grad(objective, [x])
        optimiser.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
    refined = x.detach().numpy()[0].astype(np.float32)
    both = np.stack([prior, refined])
    prior_loss, refined_loss = matching_losses(model, start, both, label, loss_fn, recipe, observed, settings.tau_end)
    better = refined_loss < prior_loss
    return Reconstruction(
        image=(refined if better else prior)[0],
        prior=prior[0],
        loss=float(min(refined_loss, prior_loss)),
        prior_loss=float(prior_loss),
        label=label,
    )
