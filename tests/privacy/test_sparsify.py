from __future__ import annotations

import numpy as np
import pytest

from confide import serde
from confide.errors import UpdateRejected
from confide.privacy.sparsify import Sparsify
from confide.records import Arrays, SparseArrays, TrainRes
from confide.server.checks import check_update
from confide.strategies import FedAvg
from tests.helpers import arrays


def _res(**values: list[float]) -> TrainRes:
    return TrainRes(round=1, update=arrays(**values), num_examples=1)


def test_topk_keeps_the_largest_entries_across_all_arrays() -> None:
    res = _res(a=[0.1, -5.0, 0.2], b=[3.0, 0.0, -0.3, 0.05])

    out = Sparsify(0.25).apply(res, np.random.default_rng(0))  # ceil(0.25 * 7) = 2 entries

    assert isinstance(out.update, SparseArrays)
    assert out.update.indices["a"].tolist() == [1] and out.update.indices["b"].tolist() == [0]
    assert out.update.values["a"].tolist() == [-5.0] and out.update.values["b"].tolist() == [3.0]
    assert out.meta["shared_fraction"] == pytest.approx(2 / 7)


def test_random_selection_is_uniform_and_without_replacement() -> None:
    update = Arrays.from_dict({"w": np.arange(1000, dtype=np.float32)})
    counts = np.zeros(1000)
    rng = np.random.default_rng(1)
    for _ in range(200):
        out = Sparsify(0.1, select="random").apply(TrainRes(round=1, update=update, num_examples=1), rng)
        idx = out.update.indices["w"]  # type: ignore[union-attr]
        assert idx.size == 100 and np.unique(idx).size == 100
        counts[idx] += 1
    assert counts.min() > 0 and counts.max() < 50  # every entry chosen sometimes; about 20 times each


def test_a_sparse_update_travels_as_indices_and_values_and_is_smaller() -> None:
    update = Arrays.from_dict({"w": np.random.default_rng(0).normal(size=(100, 100)).astype(np.float32)})
    dense = TrainRes(round=3, update=update, num_examples=4, meta={"x": 1})
    sparse = Sparsify(0.1).apply(dense, np.random.default_rng(0))

    wire = serde.encode(sparse)
    back = serde.decode(wire)

    assert isinstance(back, TrainRes) and isinstance(back.update, SparseArrays)
    assert back.update.shape("w") == (100, 100)
    np.testing.assert_array_equal(back.update.densify()["w"], sparse.update.densify()["w"])  # type: ignore[union-attr]
    assert len(wire) < 0.15 * len(serde.encode(dense))  # 10 % of the values, and one bit per entry


def test_a_forged_sparse_mask_is_refused_on_the_wire() -> None:
    good = Sparsify(0.5).apply(_res(w=[1.0, 2.0, 3.0, 4.0]), np.random.default_rng(0))
    wire = serde.encode(good)
    mask = np.packbits(np.array([0, 0, 1, 1], dtype=bool)).tobytes()  # entries 2 and 3 sent
    assert wire.endswith(mask)

    with pytest.raises(serde.PayloadError, match="of one length"):
        serde.decode(wire[:-1] + np.packbits(np.array([0, 1, 1, 1], dtype=bool)).tobytes())  # 3 marked, 2 values
    with pytest.raises(serde.PayloadError, match="past its 4 entries"):
        serde.decode(wire[:-1] + np.packbits(np.array([0, 0, 1, 1, 1], dtype=bool)).tobytes())


def test_the_server_checks_a_sparse_update_against_the_model() -> None:
    nan = TrainRes(round=1, update=SparseArrays.from_dense(arrays(w=[np.nan, 1.0]), {"w": [0]}), num_examples=1)

    with pytest.raises(UpdateRejected, match="NaN"):
        check_update("s", nan, arrays(w=[0.0, 0.0]))
    with pytest.raises(UpdateRejected, match="shape"):
        check_update("s", Sparsify(1.0).apply(_res(w=[1.0]), np.random.default_rng(0)), arrays(w=[0.0, 0.0]))


def test_fedavg_reads_a_missing_entry_as_not_reported_or_as_no_change() -> None:
    # site a sends only entry 0 (value 2), site b sends only entry 1 (value 4); equal weights
    a = TrainRes(round=1, update=SparseArrays.from_dense(arrays(w=[2.0, 9.0]), {"w": [0]}), num_examples=1)
    b = TrainRes(round=1, update=SparseArrays.from_dense(arrays(w=[9.0, 4.0]), {"w": [1]}), num_examples=1)
    start = arrays(w=[10.0, 10.0])

    reported = FedAvg(missing="reported").aggregate(1, start, iter([("a", a), ("b", b)]))
    zero = FedAvg(missing="zero").aggregate(1, start, iter([("a", a), ("b", b)]))

    np.testing.assert_allclose(reported.arrays["w"], [12.0, 14.0])  # each entry averaged over who sent it
    np.testing.assert_allclose(zero.arrays["w"], [11.0, 12.0])  # the other site counted as "no change"


def test_fedavg_mixes_dense_and_sparse_updates() -> None:
    dense = TrainRes(round=1, update=arrays(w=[1.0, 1.0]), num_examples=3)
    sparse = TrainRes(round=1, update=SparseArrays.from_dense(arrays(w=[5.0, 0.0]), {"w": [0]}), num_examples=1)

    agg = FedAvg(missing="reported").aggregate(1, arrays(w=[0.0, 0.0]), iter([("d", dense), ("s", sparse)]))

    np.testing.assert_allclose(agg.arrays["w"], [(3 * 1 + 5) / 4, 1.0])


def test_bad_arguments_are_refused() -> None:
    for fraction in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="fraction"):
            Sparsify(fraction)
    with pytest.raises(ValueError, match="select"):
        Sparsify(0.5, select="largest")  # type: ignore[arg-type]


def test_the_chain_records_each_filters_name_parameters_and_spend() -> None:
    import json

    from confide.privacy.filter import FilterChain
    from confide.privacy.gaussian import GaussianClientDP

    chain = FilterChain([GaussianClientDP(1.0, 2.0, sites=4), Sparsify(0.25)])

    out = chain.apply(_res(w=[0.5, -0.2, 0.1, 0.0]), np.random.default_rng(0))

    recorded = json.loads(str(out.meta["filter_params"]))
    assert out.meta["filters"] == "gaussian,sparsify"
    assert recorded[0]["name"] == "gaussian" and recorded[0]["params"]["z"] == 2.0
    assert recorded[0]["noise_multiplier"] == 1.0  # z / sqrt(4): what protects the site without secure aggregation
    assert recorded[1] == {
        "name": "sparsify",
        "params": {"fraction": 0.25, "select": "topk"},
        "epsilon": 0.0,
        "noise_multiplier": 0.0,
    }
