from __future__ import annotations

from confide.transport.inmemory import InMemoryTransport


class Echo:
    def handle(self, payload: bytes) -> bytes:
        return payload[::-1]


class Crash:
    def handle(self, payload: bytes) -> bytes:
        raise MemoryError("out of memory")


def test_replies_come_back_per_site_and_a_crash_is_an_error_reply() -> None:
    transport = InMemoryTransport({"a": Echo(), "b": Crash()})

    replies = {r.site: r for r in transport.exchange({"a": b"abc", "b": b"x"})}

    assert replies["a"].payload == b"cba" and replies["a"].error is None
    assert replies["b"].payload is None and "out of memory" in (replies["b"].error or "")


def test_disconnected_and_unknown_sites_get_error_replies() -> None:
    transport = InMemoryTransport({"a": Echo(), "b": Echo()})
    transport.disconnect("b")

    replies = {r.site: r for r in transport.exchange({"a": b"1", "b": b"2", "ghost": b"3"})}

    assert transport.sites() == ["a"]
    assert replies["b"].error == "site is not connected" and replies["ghost"].error == "site is not connected"
    transport.reconnect("b")
    assert transport.sites() == ["a", "b"]


def test_a_site_slower_than_the_deadline_is_late_whatever_its_turn() -> None:
    class Site:
        def __init__(self, seconds: float) -> None:
            self.seconds = seconds

        def handle(self, payload: bytes) -> bytes:
            import time

            time.sleep(self.seconds)
            return payload

    # deployed, sites train at once: a fast site answering after a slow one here is still on time. The deadline is
    # what the fast site has to answer in (was 0.2 s: a loaded machine may pause a thread that long); the slow site
    # sleeps past it whatever the load
    transport = InMemoryTransport({"slow": Site(2.5), "fast": Site(0.0)})

    replies = {r.site: r for r in transport.exchange({"slow": b"1", "fast": b"2"}, deadline_s=2.0)}

    assert "deadline" in (replies["slow"].error or "") and replies["slow"].payload is None
    assert replies["fast"].payload == b"2"


def test_a_message_shared_by_every_site_is_joined_once() -> None:
    from confide import serde
    from confide.records import TrainIns
    from tests.helpers import arrays

    joins: list[int] = []

    class Counted(serde.Encoded):
        def tobytes(self) -> bytes:
            joins.append(1)
            return super().tobytes()

    shared = Counted(list(serde.encode_parts(TrainIns(round=1, arrays=arrays(w=[1.0, 2.0]))).parts))
    transport = InMemoryTransport({name: Echo() for name in "abcd"})

    replies = list(transport.exchange(dict.fromkeys("abcd", shared)))

    assert len(replies) == 4 and len(joins) == 1
