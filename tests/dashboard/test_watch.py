"""The loop's transport with the dashboard looking on: every training answer read for what its site recorded, and
passed on exactly as it came; with tracking listening too, each answer is still read once."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from confide import serde
from confide.dashboard.snapshot import UpdateNote
from confide.dashboard.watch import note_of, read_note, watched
from confide.privacy.build import site_chain, site_ledger
from confide.privacy.config import PrivacyConfig
from confide.privacy.secagg_messages import MaskedInput
from confide.privacy.secagg_wire import COMMITMENT_BYTES, MaskedTrainRes, pack_masked
from confide.records import Arrays, Failure, SparseArrays, TrainIns, TrainRes
from confide.server.observed import ObservedTransport, observe
from confide.server.reported import ReportedUpdate
from confide.site.runner import SiteRunner
from confide.transport.inmemory import InMemoryTransport
from tests.helpers import QuadraticTask, arrays


class _Answer:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def handle(self, payload: bytes | memoryview) -> bytes:
        return self.payload


def _watched(endpoints: dict[str, object]) -> tuple[ObservedTransport, list[tuple[str, UpdateNote]]]:
    seen: list[tuple[str, UpdateNote]] = []
    return watched(InMemoryTransport(endpoints), lambda site, note: seen.append((site, note))), seen  # type: ignore[arg-type]


def test_an_update_is_read_on_its_way_and_passed_on_unchanged() -> None:
    res = TrainRes(
        round=3,
        update=arrays(w=[0.1, 0.2]),
        num_examples=7,
        metrics={"loss": 0.25},
        meta={"filters": "gaussian,sparsify", "epsilon": 0.5, "delta": 1e-5, "filter_params": "x\ny"},
    )
    payload = serde.encode(res)
    transport, seen = _watched({"a": _Answer(payload)})

    replies = list(transport.exchange({"a": b"instruction"}))

    assert [(r.site, r.payload) for r in replies] == [("a", payload)]
    ((site, note),) = seen
    assert site == "a" and (note.round, note.masked, note.num_examples) == (3, False, 7)
    assert note.filters == ("gaussian", "sparsify") and note.metrics == {"loss": 0.25}
    assert note.recorded == {"epsilon": 0.5, "delta": 1e-5, "filter_params": "x y"}  # a site's words on one line


def test_what_a_real_sites_privacy_chain_records_reaches_the_dashboard() -> None:
    privacy = PrivacyConfig.model_validate(
        {"filters": [{"type": "gaussian", "clip": 1.0, "noise_multiplier": 1.5}], "min_contributors": 1}
    )
    runner = SiteRunner(
        "a",
        QuadraticTask(arrays(w=[1.0, -1.0]), examples=5),
        chain=site_chain(privacy),
        ledger=site_ledger(privacy, "a", None),
    )
    transport, seen = _watched({"a": runner})

    list(transport.exchange({"a": serde.encode(TrainIns(round=1, arrays=arrays(w=[0.0, 0.0]), config={}))}))

    ((_, note),) = seen
    assert note.filters == ("gaussian",)
    assert float(note.recorded["epsilon"]) > 0 and note.recorded["delta"] == pytest.approx(1e-5)
    assert "noise_multiplier" in str(note.recorded["filter_params"])
    assert note.metrics == {}  # under DP a site sends no metrics, and the dashboard shows none


def test_a_masked_update_under_secure_aggregation_is_read_for_its_clear_meta() -> None:
    masked = MaskedInput("agg-1", "a", ("a", "b"), b"\0" * COMMITMENT_BYTES, np.zeros(4, dtype=np.uint32))
    control = pack_masked(2, MaskedTrainRes(masked, 1, {}, {"filters": "gaussian", "epsilon": 1.25}))

    payload = serde.encode(control)

    note = note_of(serde.decode(payload))
    on_the_wire = read_note(payload)

    assert note is not None and (note.round, note.masked, note.filters) == (2, True, ("gaussian",))
    assert note.recorded == {"epsilon": 1.25} and on_the_wire == note


def test_refusals_and_unreadable_replies_pass_on_and_record_nothing() -> None:
    refusal = serde.encode(Failure(round=1, reason="budget spent", kind="refused"))
    transport, seen = _watched({"a": _Answer(refusal), "b": _Answer(b"\x00garbage")})

    replies = {r.site: r.payload for r in transport.exchange({"a": b"1", "b": b"2"})}

    assert replies == {"a": refusal, "b": b"\x00garbage"} and seen == []


def test_a_failing_dashboard_never_reaches_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    payload = serde.encode(TrainRes(round=1, update=arrays(w=[0.0]), num_examples=1))

    def broken(site: str, note: UpdateNote) -> None:
        raise RuntimeError("dashboard bug")

    transport = watched(InMemoryTransport({"a": _Answer(payload), "b": _Answer(payload)}), broken)

    with caplog.at_level(logging.ERROR, logger="confide.server.observed"):
        replies = list(transport.exchange({"a": b"1", "b": b"2"}))

    assert [r.payload for r in replies] == [payload, payload]
    assert len(caplog.records) == 1 and "the round goes on" in caplog.records[0].message


def test_the_watched_transport_is_the_inner_one_to_the_loop() -> None:
    inner = InMemoryTransport({"a": _Answer(b""), "b": _Answer(b"")})
    inner.disconnect("b")
    transport = watched(inner, lambda site, note: None)

    present = transport.wait_for_sites(2, 0.0)  # the in-memory transport has no wait: a plain one, then who is there

    assert transport.concurrent is False and transport.sites() == ["a"] and present == ["a"]


def test_closing_the_transport_tells_the_dashboard_the_run_is_over() -> None:
    ended: list[bool] = []
    inner = InMemoryTransport({"a": _Answer(b"")})
    transport = watched(inner, lambda site, note: None, lambda: ended.append(True))

    transport.close()

    assert ended == [True] and inner.sites() == []


def test_a_sparse_update_is_read_from_its_header() -> None:
    sparse = SparseArrays(
        (("w", (4,)),), Arrays.from_dict({"w": np.array([1, 3], dtype=np.int64)}), arrays(w=[0.5, -0.5])
    )
    payload = serde.encode(TrainRes(round=2, update=sparse, num_examples=3, meta={"filters": "sparsify"}))

    note = read_note(payload)

    assert note is not None and (note.round, note.num_examples, note.filters) == (2, 3, ("sparsify",))


class _Heard:
    """A reply listener that keeps what it hears (tracking's part, as the dashboard's test sees it)."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, ReportedUpdate]] = []

    def heard(self, site: str, update: ReportedUpdate) -> None:
        self.updates.append((site, update))

    def ended(self) -> None:
        pass


def test_the_dashboard_joins_tracking_on_one_observed_transport_and_each_answer_is_read_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payload = serde.encode(TrainRes(round=4, update=arrays(w=[0.0]), num_examples=1, meta={"epsilon": 2.5}))
    inner = InMemoryTransport({"a": _Answer(payload)})
    tracking = _Heard()
    seen: list[tuple[str, UpdateNote]] = []
    reads: list[int] = []
    header = serde.read_header
    monkeypatch.setattr(serde, "read_header", lambda data: reads.append(1) or header(data))

    transport = watched(observe(inner, tracking), lambda site, note: seen.append((site, note)))
    list(transport.exchange({"a": b"1"}))

    assert transport.inner is inner and len(transport.listeners) == 2  # one wrapper, not one around another
    assert len(reads) == 1
    assert [(site, update.round, update.epsilon) for site, update in tracking.updates] == [("a", 4, 2.5)]
    assert [(site, note.recorded) for site, note in seen] == [("a", {"epsilon": 2.5})]
