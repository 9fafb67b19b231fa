"""What an instruction asks of a site's local training beyond plain optimiser steps, for every torch task.

- FedProx (``proximal_mu`` in the config): the proximal term, see :mod:`confide.tasks.proximal`.
- SCAFFOLD (Karimireddy et al. 2020): the instruction's arrays carry the server's control variate ``c`` under
  names ``scaffold.c/<array>``; the site keeps its own ``c_i`` between rounds (:class:`SiteMemory`). After every
  optimiser step the weights move by ``-lr * (c - c_i)`` (the correction applied to the step, so it holds for Adam as
  for SGD); after K steps ``c_i+ = c_i - c + (x - y) / (K lr)`` (the paper's option II) and the site sends
  ``c_i+ - c_i`` with its model update, under the same names.
- FedBN (Li et al. 2021, ``keep_local_norm`` in the config): the site's normalisation layers never leave it. It
  trains from the global model with its own normalisation arrays swapped in, keeps them afterwards, and reports a
  zero update for them.

The shared loop (:mod:`confide.tasks.loop`) calls :meth:`LocalRules.begin` (which loads the model),
:meth:`objective` on each loss, :meth:`after_step` after each optimiser step, and :meth:`finish` for the update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from confide.errors import TaskError
from confide.records import Arrays, Config
from confide.strategies.controls import CONTROL_PREFIX, model_part, split_controls
from confide.tasks.proximal import Proximal
from confide.tasks.torch_io import load_arrays, module_arrays

NORM_TYPES: tuple[type[torch.nn.Module], ...] = (
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.GroupNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
    torch.nn.LayerNorm,
)


def norm_state_names(model: torch.nn.Module) -> frozenset[str]:
    """State-dict names of every normalisation layer's parameters and buffers (running statistics included)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            for name in module.state_dict():
                names.add(f"{prefix}.{name}" if prefix else name)
    return frozenset(names)


@dataclass
class SiteMemory:
    """What a site keeps between rounds and never sends: its SCAFFOLD control variate and its FedBN norm layers."""

    controls: dict[str, np.ndarray] | None = None
    norms: dict[str, np.ndarray] | None = None

    def personal(self, arrays: Arrays) -> Arrays:
        """The global model as this site uses it: controls removed, its own normalisation layers swapped in."""
        model = model_part(arrays)
        if not self.norms:
            return model
        return Arrays.from_dict({name: self.norms.get(name, value) for name, value in model.items()})


@dataclass
class LocalRules:
    model: torch.nn.Module
    received: Arrays  # the model as this round started (after FedBN's swap): the reference of the update
    proximal: Proximal | None
    lr: float
    controls: dict[str, torch.Tensor] | None = None  # c - c_i per trainable parameter, None without SCAFFOLD
    memory: SiteMemory = field(default_factory=SiteMemory)
    server_controls: dict[str, np.ndarray] | None = None
    local_norms: frozenset[str] = frozenset()
    steps: int = 0

    @classmethod
    def begin(cls, model: torch.nn.Module, arrays: Arrays, config: Config, memory: SiteMemory) -> LocalRules:
        """Load the round's model into ``model`` (with the site's own norm layers under FedBN) and set up the rules
        the instruction asks for."""
        start, controls = split_controls(arrays)
        local: frozenset[str] = frozenset()
        if bool(config.get("keep_local_norm", False)):
            local = norm_state_names(model)
            if memory.norms:
                start = Arrays.from_dict({name: memory.norms.get(name, value) for name, value in start.items()})
        load_arrays(model, start)
        lr = float(config.get("lr", 1e-3))
        rules = cls(model, start, Proximal.from_config(model, config), lr, memory=memory, local_norms=local)
        if controls:
            if not (np.isfinite(lr) and lr > 0):
                raise TaskError(f"SCAFFOLD needs a positive learning rate, got {lr}")
            params = dict(model.named_parameters())
            unknown = sorted(set(controls) - set(start.names()))
            if unknown:
                raise TaskError(f"SCAFFOLD controls for arrays the model does not have: {unknown[:5]}")
            own = memory.controls or {}
            rules.server_controls = controls
            rules.controls = {
                name: torch.from_numpy(np.asarray(controls[name] - own.get(name, 0.0), dtype=np.float32)).reshape(
                    param.shape
                )
                for name, param in params.items()
                if param.requires_grad and name in controls
            }
        return rules

    def objective(self, loss: torch.Tensor) -> torch.Tensor:
        """The local objective: the loss, plus FedProx's proximal term when asked."""
        return loss if self.proximal is None else loss + self.proximal.penalty(self.model)

    def add_gradient(self, model: torch.nn.Module) -> None:
        """Under DP-SGD: the proximal term's gradient, added after the noise (it reads no data)."""
        if self.proximal is not None:
            self.proximal.add_gradient(model)

    def after_step(self) -> None:
        """After each optimiser step: SCAFFOLD's drift correction ``w -= lr (c - c_i)``."""
        self.steps += 1
        if self.controls is None:
            return
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                correction = self.controls.get(name)
                if correction is not None:
                    param.sub_(self.lr * correction)

    def finish(self) -> Arrays:
        """The update to send: trained minus received (zero for kept norm layers), and SCAFFOLD's control change.
        Updates the site's memory (its norm layers, its control variate)."""
        after = module_arrays(self.model)
        update: dict[str, np.ndarray] = {}
        for name, before in self.received.items():
            if name in self.local_norms:
                update[name] = np.zeros_like(before)
            else:
                update[name] = (after[name] - before).astype(before.dtype, copy=False)
        if self.local_norms:
            self.memory.norms = {name: after[name].copy() for name in self.local_norms if name in after}
        if self.server_controls is not None:
            own = self.memory.controls or {}
            trainable = {name for name, p in self.model.named_parameters() if p.requires_grad}
            new_own: dict[str, np.ndarray] = {}
            for name, c in self.server_controls.items():
                ci = own.get(name, np.zeros_like(c))
                if name in trainable and self.steps > 0:
                    drift = (self.received[name] - after[name]) / (self.steps * self.lr)
                    new_ci = (ci - c + drift).astype(c.dtype, copy=False)
                else:
                    new_ci = ci
                new_own[name] = new_ci
                update[CONTROL_PREFIX + name] = (new_ci - ci).astype(c.dtype, copy=False)
            self.memory.controls = new_own
        return Arrays.from_dict(update)
