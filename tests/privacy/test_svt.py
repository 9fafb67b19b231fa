from __future__ import annotations

import math

import numpy as np
import pytest

from confide.errors import PrivacyError
from confide.privacy.filter import FilterChain
from confide.privacy.svt import SparseVectorFilter, max_selected, svt_epsilons
from confide.records import Arrays, SparseArrays, TrainRes

HUGE = 1e9  # an epsilon so large that every noise is negligible


def _res(meta: dict[str, str] | None = None, **values: np.ndarray) -> TrainRes:
    return TrainRes(round=2, update=Arrays.from_dict(values), num_examples=5, meta=meta or {})


def _sparse(res: TrainRes) -> SparseArrays:
    assert isinstance(res.update, SparseArrays)
    return res.update


def _flat(sparse: SparseArrays, name: str = "w") -> tuple[np.ndarray, np.ndarray]:
    return sparse.indices[name], sparse.values[name]


def test_at_most_c_entries_are_released_once_each_and_sorted() -> None:
    w = np.random.default_rng(0).uniform(-1, 1, size=(40, 25))  # n = 1000
    for seed in range(5):
        out = _sparse(
            SparseVectorFilter(epsilon=1.0, fraction=0.05, clip=0.5).apply(_res(w=w), np.random.default_rng(seed))
        )
        idx, _ = _flat(out)
        assert 0 < idx.size <= 50  # c = ceil(0.05 * 1000)
        assert np.unique(idx).size == idx.size and np.all(np.diff(idx) > 0)
        assert out.shape("w") == (40, 25)


def test_selection_stops_after_c_entries_even_when_more_pass() -> None:
    w = np.full(1000, 0.9)  # every entry far above the threshold
    out = SparseVectorFilter(epsilon=HUGE, fraction=0.02, clip=1.0, threshold=0.5).apply(
        _res(w=w), np.random.default_rng(0)
    )
    assert _sparse(out).indices["w"].size == 20
    assert out.meta["svt_shared"] == pytest.approx(0.02)


def test_fraction_one_selects_every_entry_once_without_replacement() -> None:
    w = np.full(500, 0.5)
    flt = SparseVectorFilter(epsilon=HUGE, fraction=1.0, clip=1.0, threshold=0.0)
    idx, _ = _flat(_sparse(flt.apply(_res(w=w), np.random.default_rng(3))))
    np.testing.assert_array_equal(idx, np.arange(500))  # all 500, none twice

    noisy = SparseVectorFilter(epsilon=0.5, fraction=1.0, clip=1.0)
    for seed in range(5):
        idx, _ = _flat(_sparse(noisy.apply(_res(w=w), np.random.default_rng(seed))))
        assert idx.size <= 500 and np.unique(idx).size == idx.size


def test_every_released_value_carries_noise_and_stays_in_the_clip_range() -> None:
    gamma = 0.2
    rng = np.random.default_rng(1)
    w = rng.uniform(-0.9 * gamma, 0.9 * gamma, size=2000)  # strictly inside the clip range
    big = np.where(rng.random(300) < 0.5, -5.0, 5.0)  # clipped to -gamma or +gamma
    for eps in (0.5, 10.0, 1e4):
        out = _sparse(SparseVectorFilter(epsilon=eps, fraction=0.2, clip=gamma).apply(_res(w=w, b=big), rng))
        idx, val = _flat(out)
        assert idx.size > 0
        assert np.all(val != w[idx])  # no value leaves without its release noise
        assert np.all(np.abs(val) <= gamma)
        _, bval = _flat(out, "b")
        assert np.all(np.abs(bval) <= gamma)


def test_entries_are_clipped_before_the_release_noise() -> None:
    n, fraction, gamma = 4000, 0.1, 1.0
    c = max_selected(fraction, n)
    eps = 8.0 * c  # release scale c * 2 gamma / eps3 = gamma / 2
    w = np.full(n, 50.0)  # far outside the clip range: noised unclipped, nearly every release would sit at gamma
    out = SparseVectorFilter(epsilon=eps, fraction=fraction, clip=gamma).apply(_res(w=w), np.random.default_rng(0))
    _, val = _flat(_sparse(out))
    assert val.size == c
    assert 0.4 < float(np.mean(val < gamma)) < 0.6  # clip(gamma + Lap) < gamma half the time


def test_float32_stays_float32_and_inside_gamma() -> None:
    gamma = 0.1  # float32(0.1) > 0.1: the cast must not step outside
    w = np.full((30, 30), 3.0, dtype=np.float32)
    flt = SparseVectorFilter(epsilon=1.0, fraction=0.5, clip=gamma, threshold=0.0)
    out = _sparse(flt.apply(_res(w=w, i=np.zeros(4, dtype=np.int64)), np.random.default_rng(0)))
    assert out.values["w"].dtype == np.float32 and out.values["i"].dtype == np.int64
    assert out.names() == ("w", "i") and out.shape("w") == (30, 30) and out.shape("i") == (4,)
    assert out.values["w"].size > 0 and np.all(np.abs(out.values["w"].astype(np.float64)) <= gamma)
    assert np.all(out.values["i"] == 0)  # integer entries rounded, within [-floor(gamma), floor(gamma)]


def test_release_noise_has_the_documented_laplace_scale() -> None:
    n, fraction, gamma = 20_000, 0.25, 1.0
    c = max_selected(fraction, n)
    eps = 4.0 * c * 100  # release scale c * 2 gamma / eps3 = gamma / 100, so the final clip never bites
    eps3 = svt_epsilons(eps, fraction, n, None)[2]
    expected = c * 2.0 * gamma / eps3
    assert expected == pytest.approx(gamma / 100)
    w = np.full(n, 0.5)
    flt = SparseVectorFilter(epsilon=eps, fraction=fraction, clip=gamma, threshold=0.25)
    idx, val = _flat(_sparse(flt.apply(_res(w=w), np.random.default_rng(7))))
    assert idx.size == c
    mad = float(np.mean(np.abs(val - 0.5)))  # E|Lap(b)| = b
    assert abs(mad - expected) < 0.1 * expected
    assert abs(float(np.median(val - 0.5))) < 0.1 * expected  # centred


def test_huge_epsilon_selects_the_largest_entries() -> None:
    rng = np.random.default_rng(4)
    gamma = 1.0
    w = rng.uniform(-0.1, 0.1, size=(20, 50))
    large = rng.choice(w.size, size=50, replace=False)
    w.reshape(-1)[large] = np.where(rng.random(50) < 0.5, -0.9, 0.9)
    out = _sparse(SparseVectorFilter(epsilon=HUGE, fraction=0.05, clip=gamma).apply(_res(w=w), rng))
    idx, val = _flat(out)
    np.testing.assert_array_equal(idx, np.sort(large))
    np.testing.assert_allclose(val, w.reshape(-1)[idx], atol=1e-4)


def test_huge_epsilon_maps_flat_indices_to_the_right_arrays() -> None:
    a = np.zeros(7)
    b = np.zeros((3, 4))
    b[2, 1] = 0.8
    a[5] = -0.7
    out = _sparse(
        SparseVectorFilter(epsilon=HUGE, fraction=0.5, clip=1.0).apply(_res(a=a, b=b), np.random.default_rng(0))
    )
    assert out.indices["a"].tolist() == [5] and out.indices["b"].tolist() == [9]
    dense = out.densify()
    assert dense["b"][2, 1] == pytest.approx(0.8, abs=1e-4) and dense["a"][5] == pytest.approx(-0.7, abs=1e-4)


def test_tiny_epsilon_selects_almost_at_random() -> None:
    n = 2000
    w = np.full(n, 0.05)
    w[:500] = 0.95  # the top quarter
    hits = picked = 0
    for seed in range(5):
        out = SparseVectorFilter(epsilon=1e-3, fraction=0.1, clip=1.0).apply(_res(w=w), np.random.default_rng(seed))
        idx = _sparse(out).indices["w"]
        hits += int(np.sum(idx < 500))
        picked += idx.size
    assert picked >= 500
    assert 0.18 < hits / picked < 0.32  # a uniform choice gives 0.25; a perfect one 1.0


def test_spend_reports_the_total_and_its_three_parts() -> None:
    flt = SparseVectorFilter(epsilon=2.0, fraction=0.1, clip=0.5, split=(0.2, 0.3, 0.5))
    spend = flt.spend()
    assert spend.mechanism == "svt" and spend.epsilon == 2.0 and not spend.is_gaussian
    parts = [float(spend.params[k]) for k in ("epsilon_1", "epsilon_2", "epsilon_3")]
    assert parts == pytest.approx([0.4, 0.6, 1.0]) and sum(parts) == pytest.approx(2.0, rel=1e-12)
    assert spend.params["fraction"] == 0.1 and spend.params["clip"] == 0.5 and spend.params["threshold"] == 0.25

    lyu = SparseVectorFilter(epsilon=1.0, fraction=0.1, clip=0.5)
    assert lyu.spend().epsilon == 1.0 and "epsilon_1" not in lyu.spend().params  # depends on the model's size
    out = lyu.apply(_res(w=np.zeros(1000)), np.random.default_rng(0))
    assert out.meta["svt_epsilon"] == 1.0
    params = lyu.spend().params
    e1, e2, e3 = (float(params[k]) for k in ("epsilon_1", "epsilon_2", "epsilon_3"))
    assert e1 + e2 + e3 == pytest.approx(lyu.spend().epsilon, rel=1e-12)
    assert e3 == pytest.approx(0.5) and e2 / e1 == pytest.approx((2 * 100) ** (2 / 3))
    assert params["max_shared"] == 100 and lyu.spend(n_entries=10).params["max_shared"] == 1


def test_svt_epsilons_sum_to_the_total() -> None:
    for n in (1, 7, 1000, 10**7):
        for split in (None, (0.1, 0.6, 0.3)):
            parts = svt_epsilons(3.0, 0.3, n, split)
            assert all(p > 0 for p in parts) and sum(parts) == pytest.approx(3.0, rel=1e-12)
    assert max_selected(0.1, 30) == 3  # 0.1 * 30 is 3.0000000000000004 in floating point


def test_meta_is_merged_and_the_chain_records_the_filter() -> None:
    res = _res(meta={"x": "kept"}, w=np.zeros(100))
    out = FilterChain([SparseVectorFilter(epsilon=1.0, fraction=0.1, clip=1.0)]).apply(res, np.random.default_rng(0))
    assert out.meta["x"] == "kept" and out.meta["filters"] == "svt"
    assert out.meta["svt_shared"] == pytest.approx(_sparse(out).fraction) and out.meta["svt_shared"] <= 0.1
    assert out.round == 2 and out.num_examples == 5


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"epsilon": math.nan}, "epsilon"),
        ({"epsilon": math.inf}, "epsilon"),
        ({"epsilon": "1"}, "epsilon"),
        ({"epsilon": True}, "epsilon"),
        ({"fraction": 0.0}, "fraction"),
        ({"fraction": 1.5}, "fraction"),
        ({"fraction": math.nan}, "fraction"),
        ({"fraction": -0.1}, "fraction"),
        ({"clip": 0.0}, "clip"),
        ({"clip": -1.0}, "clip"),
        ({"clip": math.nan}, "clip"),
        ({"clip": math.inf}, "clip"),
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": math.nan}, "threshold"),
        ({"threshold": 2.0}, "threshold"),  # above clip: no entry could pass
        ({"split": (0.5, 0.5)}, "split"),
        ({"split": (0.5, 0.5, 0.5)}, "split"),
        ({"split": (0.0, 0.5, 0.5)}, "split"),
        ({"split": (math.nan, 0.5, 0.5)}, "split"),
        ({"split": "0.2:0.3:0.5"}, "split"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs: dict[str, object], argument: str) -> None:
    args: dict[str, object] = {"epsilon": 1.0, "fraction": 0.1, "clip": 1.0, **kwargs}
    with pytest.raises(ValueError, match=argument):
        SparseVectorFilter(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_update_is_refused_and_the_chain_blocks_it(bad: float) -> None:
    w = np.zeros(50, dtype=np.float32)
    w[17] = bad
    flt = SparseVectorFilter(epsilon=1.0, fraction=0.1, clip=1.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        flt.apply(_res(w=w), np.random.default_rng(0))
    with pytest.raises(PrivacyError, match="svt"):
        FilterChain([flt]).apply(_res(w=w), np.random.default_rng(0))


def test_a_sparse_or_odd_update_is_refused() -> None:
    sparse = SparseArrays.from_dense(Arrays.from_dict({"w": np.ones(10)}), {"w": np.array([1, 2])})
    flt = SparseVectorFilter(epsilon=1.0, fraction=0.1, clip=1.0)
    with pytest.raises(ValueError, match="sparse"):
        flt.apply(TrainRes(round=1, update=sparse, num_examples=1), np.random.default_rng(0))
    with pytest.raises(ValueError, match="dtype"):
        flt.apply(_res(m=np.ones(4, dtype=bool)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="no entries"):
        flt.apply(_res(w=np.zeros(0)), np.random.default_rng(0))


def test_the_same_seed_gives_the_same_output() -> None:
    w = np.random.default_rng(9).normal(size=(70, 1000)).astype(np.float32)  # more than one noise batch
    flt = SparseVectorFilter(epsilon=5.0, fraction=0.3, clip=1.0)
    one = _sparse(flt.apply(_res(w=w), np.random.default_rng(42)))
    two = _sparse(flt.apply(_res(w=w), np.random.default_rng(42)))
    other = _sparse(flt.apply(_res(w=w), np.random.default_rng(43)))
    np.testing.assert_array_equal(one.indices["w"], two.indices["w"])
    np.testing.assert_array_equal(one.values["w"], two.values["w"])
    assert not np.array_equal(one.indices["w"], other.indices["w"])


def test_only_the_rng_passed_in_is_used() -> None:
    w = np.random.default_rng(2).normal(size=300)
    flt = SparseVectorFilter(epsilon=5.0, fraction=0.3, clip=1.0)
    np.random.seed(0)
    one = _sparse(flt.apply(_res(w=w), np.random.default_rng(5)))
    np.random.seed(1)
    two = _sparse(flt.apply(_res(w=w), np.random.default_rng(5)))
    np.testing.assert_array_equal(one.values["w"], two.values["w"])
