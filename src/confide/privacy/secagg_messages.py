"""Secure-aggregation wire types: the frozen messages, :class:`SecAggError`, and their validation helpers.

The messages are made of strings, bytes, ints and numpy arrays only, so any transport can carry them; the
protocol that exchanges them is described in :mod:`confide.privacy.secagg`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from confide.errors import PrivacyError

__all__ = [
    "KEY_BYTES",
    "Advertisement",
    "AggregateResult",
    "EncryptedShare",
    "MaskedInput",
    "Roster",
    "SecAggError",
    "SurvivorCheck",
    "SurvivorSignature",
    "UnmaskRequest",
    "UnmaskResponse",
]

KEY_BYTES = 32
"""Size of an X25519 public key in an :class:`Advertisement` (and of the AES-256 keys derived by HKDF)."""


class SecAggError(PrivacyError, ValueError):
    """A secure-aggregation message or step is invalid; the message says which client and what is wrong."""


# --------------------------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Advertisement:
    """Step 1, client -> server: the client's two X25519 public keys (32 raw bytes each). A site signs them
    (:mod:`confide.privacy.secagg_identity`): ``certificate`` is its X.509 certificate (DER) and ``signature``
    its signature over the keys, the aggregation id, its name and the round; both empty until signed."""

    aggregation_id: str
    sender: str
    c_public: bytes
    s_public: bytes
    certificate: bytes = b""
    signature: bytes = b""

    def same_keys(self, other: Advertisement) -> bool:
        """Whether ``other`` advertises the same keys for the same sender and aggregation (signature aside)."""
        return (self.aggregation_id, self.sender, self.c_public, self.s_public) == (
            other.aggregation_id,
            other.sender,
            other.c_public,
            other.s_public,
        )


@dataclass(frozen=True)
class Roster:
    """Step 1, server -> clients: every advertisement accepted, sorted by sender; index = position.
    ``revocation_list``: the federation's certificate revocation list as the server holds it (a CRL the
    federation CA signed, PEM), which a site uses only if the CA's signature verifies; empty if none."""

    aggregation_id: str
    threshold: int
    advertisements: tuple[Advertisement, ...]
    revocation_list: bytes = b""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(ad.sender for ad in self.advertisements)


@dataclass(frozen=True)
class EncryptedShare:
    """Step 2, client -> server -> client: the sender's shares of ``b`` and ``s`` for one recipient, sealed."""

    aggregation_id: str
    sender: str
    recipient: str
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Step 3, client -> server: the masked vector (uint32), the participants it was masked with, and a
    SHA-256 commitment to the self-mask seed ``b`` so the server can tell a correctly rebuilt ``b``."""

    aggregation_id: str
    sender: str
    peers: tuple[str, ...]
    seed_commitment: bytes
    masked: npt.NDArray[np.uint32]


@dataclass(frozen=True)
class SurvivorCheck:
    """Step 4a, server -> survivors (consistency check): the survivors and the dropped participants, for each
    survivor to sign; a site signs one such set per aggregation."""

    aggregation_id: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class SurvivorSignature:
    """Step 4a, survivor -> server: its signature over the survivor set it was shown
    (:func:`confide.privacy.secagg_identity.survivors_payload`)."""

    aggregation_id: str
    sender: str
    signature: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """Step 4, server -> survivors: who sent masked input (``survivors``) and who did not (``dropped``), with the
    survivors' ``signatures`` over that very set (``(signer, signature)`` pairs, at least the threshold of them
    where the sites check identities; empty in the core's own in-memory runs)."""

    aggregation_id: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class UnmaskResponse:
    """Step 4, survivor -> server: shares of ``b`` for each survivor and of ``s`` for each dropped client."""

    aggregation_id: str
    sender: str
    self_mask_shares: tuple[tuple[str, int], ...]
    mask_key_shares: tuple[tuple[str, int], ...]


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """The decoded sum, how many inputs it holds, who is in it and which roster members are not."""

    sum: npt.NDArray[np.float64]
    count: int
    dropped: tuple[str, ...]
    contributors: tuple[str, ...]


# ------------------------------------------------------------------------------------------- validation


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise SecAggError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _check_length(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SecAggError(f"vector_length must be a positive int, got {value!r}")
    return value


def _check_roster(roster: Roster, aggregation_id: str) -> dict[str, int]:
    """Validate a roster and return each name's index."""
    if not isinstance(roster, Roster):
        raise SecAggError(f"expected a Roster, got {type(roster).__name__}")
    if roster.aggregation_id != aggregation_id:
        raise SecAggError(f"roster is for aggregation {roster.aggregation_id!r}, not {aggregation_id!r}")
    names = roster.names
    if list(names) != sorted(set(names)):
        raise SecAggError("roster names must be unique and sorted")
    n = len(names)
    t = roster.threshold
    if isinstance(t, bool) or not isinstance(t, int) or not 2 <= t <= n:
        raise SecAggError(f"roster threshold {t!r} is invalid for {n} clients (need 2 <= t <= n)")
    for ad in roster.advertisements:
        if ad.aggregation_id != aggregation_id:
            raise SecAggError(f"roster entry {ad.sender!r} is for aggregation {ad.aggregation_id!r}")
        for key in (ad.c_public, ad.s_public):
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise SecAggError(f"roster entry {ad.sender!r}: public keys must be {KEY_BYTES} bytes")
    return {name: index for index, name in enumerate(names)}
