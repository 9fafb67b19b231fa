from __future__ import annotations

import numpy as np
import pytest

from confide.records import TrainRes
from confide.strategies import fed_median, fed_trimmed_mean, make_strategy
from confide.strategies.aggregate import coordinate_median, trimmed_mean
from tests.helpers import arrays

UPDATES = [arrays(w=[1.0, 10.0]), arrays(w=[2.0, 20.0]), arrays(w=[3.0, 30.0]), arrays(w=[100.0, -1000.0])]


def test_coordinate_median_hand_computed() -> None:
    # column 0: median of 1, 2, 3, 100 = 2.5; column 1: median of -1000, 10, 20, 30 = 15
    np.testing.assert_allclose(coordinate_median(UPDATES)["w"], [2.5, 15.0])


def test_trimmed_mean_drops_the_extremes() -> None:
    # n = 4, trim 0.25 cuts one value at each end: column 0 keeps 2, 3 -> 2.5; column 1 keeps 10, 20 -> 15
    np.testing.assert_allclose(trimmed_mean(UPDATES, 0.25)["w"], [2.5, 15.0])
    np.testing.assert_allclose(trimmed_mean(UPDATES, 0.0)["w"], [26.5, -235.0])  # plain mean
    with pytest.raises(ValueError):
        trimmed_mean(UPDATES, 0.5)


def test_median_strategy_resists_one_hostile_site() -> None:
    results = [(f"s{i}", TrainRes(round=1, update=u, num_examples=1)) for i, u in enumerate(UPDATES)]

    agg = fed_median().aggregate(1, arrays(w=[0.0, 0.0]), iter(results))

    np.testing.assert_allclose(agg.arrays["w"], [2.5, 15.0])
    assert agg.sites == ("s0", "s1", "s2", "s3") and agg.num_examples == 4


def test_strategies_are_chosen_by_name() -> None:
    assert make_strategy("trimmed_mean", {}, trim_fraction=0.1).name == "trimmed_mean"
    assert make_strategy("median", {}).name == "median"
    with pytest.raises(ValueError):
        fed_trimmed_mean(trim_fraction=0.6)
    with pytest.raises(ValueError):
        make_strategy("fedsgd", {})


def test_robust_strategies_keep_copies_of_updates_whose_buffer_is_reused() -> None:
    # The gRPC transport hands each update in one reused buffer, valid until the next is drawn.
    buffer = np.zeros(2, np.float32)

    def results():  # type: ignore[no-untyped-def]
        for i, u in enumerate(UPDATES):
            buffer[:] = u["w"]
            view = buffer.view()
            view.flags.writeable = False
            yield f"s{i}", TrainRes(round=1, update=arrays_from_view(view), num_examples=1)
        buffer[:] = np.nan  # whatever the buffer holds next must not reach the aggregate

    agg = fed_median().aggregate(1, arrays(w=[0.0, 0.0]), results())

    np.testing.assert_allclose(agg.arrays["w"], [2.5, 15.0])


def arrays_from_view(view: np.ndarray):  # type: ignore[no-untyped-def]
    from confide.records import Arrays

    return Arrays.from_dict({"w": view})
