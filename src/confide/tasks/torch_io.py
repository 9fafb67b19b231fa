"""Moving a torch module's state to and from :class:`~confide.records.Arrays`."""

from __future__ import annotations

import numpy as np
import torch

from confide.errors import TaskError
from confide.records import Arrays


def module_arrays(module: torch.nn.Module) -> Arrays:
    """The module's state (parameters and buffers) as arrays, in state-dict order."""
    return Arrays.from_dict(
        {name: tensor.detach().cpu().numpy().copy() for name, tensor in module.state_dict().items()}
    )


def load_arrays(module: torch.nn.Module, arrays: Arrays) -> None:
    """Load arrays into the module, refusing any mismatch in names or shapes."""
    state = module.state_dict()
    if tuple(state) != arrays.names():
        missing = sorted(set(state) - set(arrays.names()))[:5]
        extra = sorted(set(arrays.names()) - set(state))[:5]
        raise TaskError(f"arrays do not fit the model: missing {missing}, unexpected {extra}")
    loaded = {}
    for name, value in arrays.items():
        if tuple(state[name].shape) != value.shape:
            raise TaskError(f"array {name!r} has shape {value.shape}, the model expects {tuple(state[name].shape)}")
        loaded[name] = torch.from_numpy(np.array(value, copy=True))
    module.load_state_dict(loaded)


def difference(after: Arrays, before: Arrays) -> Arrays:
    """``after - before`` array by array, in the dtype of ``before``."""
    return Arrays.from_dict(
        {name: (after[name] - value).astype(value.dtype, copy=False) for name, value in before.items()}
    )
