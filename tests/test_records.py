from __future__ import annotations

import numpy as np
import pytest

from confide.records import Arrays, TrainIns, TrainRes


def test_arrays_keep_order_and_are_read_only() -> None:
    source = {"b": np.ones(2, np.float32), "a": np.zeros((1, 2), np.float32)}

    arrays = Arrays.from_dict(source)

    assert arrays.names() == ("b", "a")
    with pytest.raises(ValueError):
        arrays["a"][0, 0] = 5.0
    source["b"][0] = 7.0  # the caller's array stays writable
    assert source["b"][0] == 7.0


def test_arrays_copy_detaches_from_source() -> None:
    source = {"w": np.ones(3, np.float32)}
    arrays = Arrays.from_dict(source, copy=True)

    source["w"][:] = 9

    assert arrays["w"].tolist() == [1.0, 1.0, 1.0]


def test_arrays_refuse_duplicate_or_empty_names() -> None:
    with pytest.raises(TypeError):
        Arrays.from_dict({"": np.ones(1)})


def test_same_layout_compares_names_shapes_dtypes() -> None:
    a = Arrays.from_dict({"w": np.ones(3, np.float32)})

    assert a.same_layout(Arrays.from_dict({"w": np.zeros(3, np.float32)}))
    assert not a.same_layout(Arrays.from_dict({"w": np.zeros(3, np.float64)}))
    assert not a.same_layout(Arrays.from_dict({"w": np.zeros(4, np.float32)}))
    assert not a.same_layout(Arrays.from_dict({"v": np.zeros(3, np.float32)}))


def test_records_freeze_their_mappings() -> None:
    ins = TrainIns(round=1, arrays=Arrays.from_dict({}), config={"lr": 0.1})
    res = TrainRes(round=1, update=Arrays.from_dict({}), num_examples=3, metrics={"loss": 1})

    with pytest.raises(TypeError):
        ins.config["lr"] = 1.0  # type: ignore[index]
    assert res.metrics["loss"] == 1.0 and isinstance(res.metrics["loss"], float)
    with pytest.raises(ValueError):
        TrainRes(round=1, update=Arrays.from_dict({}), num_examples=-1)


def test_arrays_refuse_duplicate_names() -> None:
    one = np.ones(1, np.float32)

    with pytest.raises(ValueError, match="unique"):
        Arrays((("w", one), ("w", one)))
