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


def test_sites_past_the_deadline_are_reported() -> None:
    class Slow:
        def handle(self, payload: bytes) -> bytes:
            import time

            time.sleep(0.05)
            return payload

    transport = InMemoryTransport({"a": Slow(), "b": Slow()})

    replies = {r.site: r for r in transport.exchange({"a": b"1", "b": b"2"}, deadline_s=0.01)}

    assert replies["a"].payload == b"1"
    assert "deadline" in (replies["b"].error or "")
