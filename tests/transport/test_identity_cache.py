"""The server checks a certificate once per few seconds, and again at once when the revocation list or the
roster changes."""

from __future__ import annotations

import pytest

from confide.provision import IdentityError
from confide.transport.peers import IdentityCache


def test_a_certificate_is_checked_once_while_the_lists_stay_the_same() -> None:
    cache = IdentityCache(ttl_s=60.0)
    checks: list[str] = []
    revoked: frozenset[int] = frozenset()

    def check() -> str:
        checks.append("checked")
        return "site-1"

    names = [cache.name(b"cert-1", revoked, None, check) for _ in range(5)]

    assert names == ["site-1"] * 5 and len(checks) == 1


def test_a_new_revocation_list_or_roster_is_applied_to_the_next_call() -> None:
    cache = IdentityCache(ttl_s=60.0)
    assert cache.name(b"cert-1", frozenset(), None, lambda: "site-1") == "site-1"

    def refused() -> str:
        raise IdentityError("certificate 1A was revoked")

    with pytest.raises(IdentityError, match="revoked"):
        cache.name(b"cert-1", frozenset({0x1A}), None, refused)  # a new list: checked again, at once
    with pytest.raises(IdentityError, match="revoked"):
        cache.name(b"cert-1", frozenset({0x1A}), {"site-1": 2}, refused)


def test_a_refused_certificate_is_never_remembered_and_an_old_check_expires() -> None:
    cache = IdentityCache(ttl_s=0.0)
    revoked: frozenset[int] = frozenset()
    calls: list[int] = []

    def refused() -> str:
        calls.append(1)
        raise IdentityError("not issued by this federation's CA")

    for _ in range(3):
        with pytest.raises(IdentityError):
            cache.name(b"cert-x", revoked, None, refused)
    cache.name(b"cert-1", revoked, None, lambda: "site-1")

    assert len(calls) == 3
    with pytest.raises(IdentityError):  # expired at once (ttl 0): checked again
        cache.name(b"cert-1", revoked, None, refused)
