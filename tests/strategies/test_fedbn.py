from __future__ import annotations

import numpy as np
import pytest
import torch

from confide.records import Arrays, SparseArrays, TrainRes
from confide.strategies import make_strategy
from confide.strategies.fedbn import FedBN
from confide.tasks.local_rules import LocalRules, SiteMemory, norm_state_names
from confide.tasks.torch_io import module_arrays
from tests.helpers import arrays


def test_norm_layers_keep_their_global_value_and_the_rest_is_averaged() -> None:
    strategy = FedBN({"lr": 0.1}, local_names={"bn"})
    start = arrays(w=[1.0, 1.0], bn=[5.0])
    results = [
        ("a", TrainRes(round=1, update=arrays(w=[2.0, 0.0], bn=[100.0]), num_examples=1)),  # bn sent anyway
        ("b", TrainRes(round=1, update=arrays(w=[-1.0, 3.0], bn=[0.0]), num_examples=2)),
    ]

    out = strategy.aggregate(1, start, iter(results))

    # w: [1,1] + ([2,0]*1 + [-1,3]*2) / 3 = [1, 3]; bn untouched
    assert np.allclose(out.arrays["w"], [1.0, 3.0])
    assert np.allclose(out.arrays["bn"], [5.0])


def test_a_sparse_update_never_moves_the_norm_layers() -> None:
    strategy = FedBN({}, local_names={"bn"})
    update = SparseArrays.from_dense(arrays(w=[2.0, 4.0], bn=[9.0]), {"w": np.array([1]), "bn": np.array([0])})

    out = strategy.aggregate(
        1, arrays(w=[0.0, 0.0], bn=[1.0]), iter([("a", TrainRes(round=1, update=update, num_examples=1))])
    )

    assert np.allclose(out.arrays["w"], [0.0, 4.0])
    assert np.allclose(out.arrays["bn"], [1.0])


def test_the_instruction_asks_sites_to_keep_their_norm_layers() -> None:
    strategy = make_strategy("fedbn", {"lr": 0.1}, norm_names=frozenset({"bn"}))

    (ins,) = strategy.configure(1, arrays(w=[0.0], bn=[1.0]), ["a"]).values()

    assert ins.config["keep_local_norm"] is True
    with pytest.raises(ValueError, match="no normalisation"):
        FedBN({}, local_names=())


def test_a_site_keeps_its_own_batchnorm_and_sends_zeros_for_it() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    names = norm_state_names(model)
    start = module_arrays(model)
    memory = SiteMemory()
    x = torch.randn(16, 3) * 3 + 2

    def one_round(arrays: Arrays) -> Arrays:
        rules = LocalRules.begin(model, arrays, {"lr": 0.01, "keep_local_norm": True}, memory)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for _ in range(3):
            opt.zero_grad()
            rules.objective(model(x).pow(2).mean()).backward()
            opt.step()
            rules.after_step()
        return rules.finish()

    first = one_round(start)
    assert names == {"1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert all(not np.any(first[n]) for n in names)
    assert np.any(first["0.weight"])
    assert memory.norms is not None and not np.allclose(memory.norms["1.running_mean"], start["1.running_mean"])
    # the next round starts from the global model but with the site's own statistics
    personal = memory.personal(start)
    assert np.allclose(personal["1.running_mean"], memory.norms["1.running_mean"])
    assert np.allclose(personal["0.weight"], start["0.weight"])
