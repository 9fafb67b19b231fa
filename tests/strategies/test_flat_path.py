"""An update decoded from the wire holds its arrays in one vector: its checks and its sum take a few numpy calls
instead of one per array, and give what the array-by-array path gives."""

from __future__ import annotations

import numpy as np
import pytest

from confide import serde
from confide.errors import UpdateRejected
from confide.records import Arrays, TrainRes
from confide.server.checks import check_update
from confide.strategies.aggregate import Accumulator, accumulate, zeros_like


def _model(seed: int, dtype: type = np.float32) -> Arrays:
    rng = np.random.default_rng(seed)
    shapes = [(3, 4), (7,), (2, 3, 5), (1,), (64,)]
    return Arrays.from_dict({f"layer{i}": rng.normal(size=s).astype(dtype) for i, s in enumerate(shapes)})


def _wire(update: Arrays) -> TrainRes:
    res = serde.decode(serde.encode(TrainRes(round=1, update=update, num_examples=5)))
    assert isinstance(res, TrainRes)
    return res


def test_a_decoded_update_is_one_vector_and_a_built_one_is_not() -> None:
    res = _wire(_model(1))

    assert res.update.flat is not None and res.update.flat.size == sum(v.size for v in res.update.values())
    np.testing.assert_array_equal(res.update.flat, np.concatenate([v.ravel() for v in _model(1).values()]))
    assert _model(1).flat is None
    mixed = Arrays.from_dict({"w": np.ones(3, np.float32), "steps": np.arange(2)})
    assert _wire(mixed).update.flat is None  # an integer array among them: array by array


def test_the_one_vector_check_gives_the_array_by_array_norm_and_names_a_nan() -> None:
    global_arrays = _model(0)
    update = _model(2)
    flat = _wire(update)
    by_array = TrainRes(round=1, update=update, num_examples=5)

    assert check_update("a", flat, global_arrays) == pytest.approx(check_update("a", by_array, global_arrays), rel=1e-6)
    poisoned = update.to_dict()
    poisoned["layer2"] = poisoned["layer2"].copy()
    poisoned["layer2"][1, 2, 3] = np.nan
    with pytest.raises(UpdateRejected, match="'layer2' holds NaN"):
        check_update("a", _wire(Arrays.from_dict(poisoned)), global_arrays)


def test_adding_one_vector_gives_exactly_what_adding_array_by_array_gives() -> None:
    global_arrays = _model(0)
    flat_acc = zeros_like(global_arrays)
    plain = {name: np.zeros_like(value) for name, value in global_arrays.items()}
    assert isinstance(flat_acc, Accumulator)

    for seed, weight in ((3, 1.0), (4, 0.37), (5, 12.0)):
        update = _wire(_model(seed)).update
        assert flat_acc.takes_whole(update)
        accumulate(flat_acc, update, weight)
        accumulate(plain, update, weight)

    for name in plain:
        np.testing.assert_array_equal(flat_acc[name], plain[name])


def test_an_accumulator_whose_array_was_replaced_adds_array_by_array() -> None:
    global_arrays = _model(0)
    acc = zeros_like(global_arrays)
    assert isinstance(acc, Accumulator)
    acc["layer1"] = np.full(7, 1.0, np.float32)  # no longer a view of the vector
    update = _wire(_model(6)).update

    accumulate(acc, update, 1.0)

    assert not acc.takes_whole(update)
    np.testing.assert_array_equal(acc["layer1"], 1.0 + update["layer1"])
    np.testing.assert_array_equal(acc["layer0"], update["layer0"])
