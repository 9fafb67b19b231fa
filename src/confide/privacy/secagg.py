"""Secure aggregation: the server learns the sum of the sites' vectors, not any single one.

This is the cryptographic core of the protocol of Bonawitz et al. (CCS 2017, "Practical Secure
Aggregation for Privacy-Preserving Machine Learning"), written so that it can later carry the
SecAgg+ ideas of Bell et al. (CCS 2020). It is pure and transport-free: clients and the server
exchange frozen dataclass messages made of strings, bytes, ints and numpy arrays, and the platform
may carry them over any transport. Nothing here pickles.

One aggregation, ``n`` clients named by strings, threshold ``t`` (2 <= t <= n):

1. **Advertise.** Each client makes two X25519 key pairs, ``c`` (to encrypt shares to peers) and
   ``s`` (for pairwise masks), and sends both public keys (:class:`Advertisement`). The server
   broadcasts the :class:`Roster`, sorted by name; a client's *index* is its position in it.
2. **Share.** Each client draws a 32-byte self-mask seed ``b`` and Shamir-splits ``b`` and its raw
   mask private key ``s`` over GF(2**521 - 1), threshold ``t``; the share for roster member ``j``
   is the polynomial at ``x = index(j) + 1`` (the client keeps a share of its own secrets too).
   Each recipient's pair of shares is sealed with AES-256-GCM (:class:`EncryptedShare`). The server
   routes them; a client that sent a complete bundle is a *participant*.
3. **Masked input.** Each participant encodes its vector in fixed point in Z_{2^32}, adds the self
   mask ``PRG(b)`` and, for every other participant ``j``, ``+PRG(s_ij)`` if its name sorts before
   ``j`` else ``-PRG(s_ij)`` (:class:`MaskedInput`, which also carries a hash commitment to ``b``).
   Pairwise masks cancel in the sum.
4. **Unmask.** The server names the participants whose masked input arrived (survivors, ``U``) and
   those that did not (dropped, ``D``) (:class:`UnmaskRequest`). Each survivor still online returns
   its share of ``b`` for every client in ``U`` and of ``s`` for every client in ``D``, never both
   for one client (:class:`UnmaskResponse`). With at least ``t`` responses the server rebuilds the
   self masks of ``U`` and the mask keys of ``D``, removes every mask and decodes the sum
   (:class:`AggregateResult`). A survivor that goes silent after sending its masked input is
   still in the sum: the others' shares of its ``b`` suffice.

Parameters (all fixed for protocol version ``confide-secagg/v1``):

* Field: the Mersenne prime ``p = 2**521 - 1``; secrets are 32-byte big-endian integers, field
  elements travel as Python ints (66 bytes big-endian inside a ciphertext).
* KDF: HKDF-SHA256, no salt, 32-byte output; ``info`` is ``b"confide-secagg/v1/" + label``
  followed by each bound string as a 4-byte big-endian length and its UTF-8 bytes:

  - ``share-key`` (aggregation id, sender, recipient): AES-256-GCM key from X25519(c_i, c_j);
  - ``share-aad`` (same fields): the GCM associated data, binding the ciphertext to its route;
  - ``pair-mask`` (aggregation id, lower name, higher name): the pairwise mask seed from X25519(s_i, s_j);
  - ``seed-commitment`` (aggregation id, sender): not a KDF label but the prefix hashed with ``b`` by
    SHA-256 for the commitment in :class:`MaskedInput` (``b`` is 32 uniform bytes, so it stays hidden).

* PRG: AES-256-CTR keyed with the 32-byte seed, initial counter block all zero, keystream read as
  little-endian uint32 (deterministic on every machine, a standard cipher in counter mode).
* Fixed point: ``round(clip(x, -R, R) * scale)`` as a two's-complement int32 stored mod 2**32.
  The sum of ``n`` inputs cannot wrap when ``n * R * scale < 2**31`` (checked by
  :func:`check_no_wrap`); defaults ``scale = 2**20`` (resolution about 1e-6) and ``R = 4.0`` allow
  up to 511 clients.

Security notes. The server is assumed honest but curious for the sum to be correct; privacy of a
single input also holds against a server that lies in its unmask requests as long as ``t > n / 2``
(the default threshold ``floor(2n/3) + 1`` is): a client answers one request only and refuses any
request that asks for both shares of one client. Randomness comes from ``os.urandom`` unless a
``rng`` (a ``Callable[[int], bytes]``) is injected, which tests do for reproducibility only.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from confide.errors import PrivacyError

__all__ = [
    "DEFAULT_CLIP_RANGE",
    "DEFAULT_SCALE",
    "FIELD_PRIME",
    "Advertisement",
    "AggregateResult",
    "EncryptedShare",
    "MaskedInput",
    "RandomBytes",
    "Roster",
    "SecAggClient",
    "SecAggError",
    "SecAggServer",
    "UnmaskRequest",
    "UnmaskResponse",
    "check_no_wrap",
    "default_threshold",
    "fixed_point_decode",
    "fixed_point_encode",
    "prg_uint32",
    "run_secure_sum",
    "shamir_combine",
    "shamir_split",
]

FIELD_PRIME = 2**521 - 1
FIELD_BYTES = 66
SECRET_BYTES = 32
KEY_BYTES = 32
NONCE_BYTES = 12
DEFAULT_SCALE = 2.0**20
DEFAULT_CLIP_RANGE = 4.0
RING_HALF = 2**31
PROTOCOL_LABEL = b"confide-secagg/v1/"
_TAG_BYTES = 16
_SHARE_PLAINTEXT_BYTES = 2 * FIELD_BYTES
_SHARE_CIPHERTEXT_BYTES = _SHARE_PLAINTEXT_BYTES + _TAG_BYTES

RandomBytes = Callable[[int], bytes]
"""A source of random bytes: ``rng(n)`` returns ``n`` bytes (``os.urandom`` by default)."""


class SecAggError(PrivacyError, ValueError):
    """A secure-aggregation message or step is invalid; the message says which client and what is wrong."""


# --------------------------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Advertisement:
    """Step 1, client -> server: the client's two X25519 public keys (32 raw bytes each)."""

    aggregation_id: str
    sender: str
    c_public: bytes
    s_public: bytes


@dataclass(frozen=True)
class Roster:
    """Step 1, server -> clients: every advertisement accepted, sorted by sender; index = position."""

    aggregation_id: str
    threshold: int
    advertisements: tuple[Advertisement, ...]

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
class UnmaskRequest:
    """Step 4, server -> survivors: who sent masked input (``survivors``) and who did not (``dropped``)."""

    aggregation_id: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


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


# ------------------------------------------------------------------------------------------ pure helpers


def default_threshold(n: int) -> int:
    """``floor(2n/3) + 1``, at least 2 and at most ``n``: more than half, so a lying server cannot unmask."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise SecAggError(f"secure aggregation needs at least 2 clients, got {n!r}")
    return max(2, min(n, 2 * n // 3 + 1))


def _random_field_element(rng: RandomBytes) -> int:
    # 16 extra bytes make the modulo bias at most 2**-135.
    return int.from_bytes(rng(FIELD_BYTES + 16), "big") % FIELD_PRIME


def shamir_split(secret: int, n: int, t: int, *, rng: RandomBytes | None = None) -> list[tuple[int, int]]:
    """Split ``secret`` (a field element) into ``n`` shares ``(x, y)`` at ``x = 1..n``; any ``t`` rebuild it."""
    if isinstance(secret, bool) or not isinstance(secret, int) or not 0 <= secret < FIELD_PRIME:
        raise SecAggError("the secret to split must be an int in [0, 2**521 - 1)")
    if isinstance(n, bool) or isinstance(t, bool) or not isinstance(n, int) or not isinstance(t, int):
        raise SecAggError(f"n and t must be ints, got n={n!r}, t={t!r}")
    if not 2 <= t <= n:
        raise SecAggError(f"threshold must satisfy 2 <= t <= n, got t={t}, n={n}")
    source = rng or os.urandom
    coefficients = [secret] + [_random_field_element(source) for _ in range(t - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for coefficient in reversed(coefficients):
            y = (y * x + coefficient) % FIELD_PRIME
        shares.append((x, y))
    return shares


def _lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """The Lagrange coefficients that evaluate at 0 the polynomial through points at ``xs``."""
    coefficients = []
    for j, xj in enumerate(xs):
        numerator, denominator = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                numerator = numerator * xm % FIELD_PRIME
                denominator = denominator * (xm - xj) % FIELD_PRIME
        coefficients.append(numerator * pow(denominator, -1, FIELD_PRIME) % FIELD_PRIME)
    return coefficients


def _check_points(xs: Sequence[int]) -> None:
    if not xs:
        raise SecAggError("no shares to combine")
    for x in xs:
        if isinstance(x, bool) or not isinstance(x, int) or not 0 < x < FIELD_PRIME:
            raise SecAggError(f"share abscissa {x!r} is not a non-zero field element")
    if len(set(xs)) != len(xs):
        raise SecAggError("two shares have the same abscissa")


def _is_field_element(y: object) -> bool:
    return isinstance(y, int) and not isinstance(y, bool) and 0 <= y < FIELD_PRIME


def shamir_combine(shares: Sequence[tuple[int, int]]) -> int:
    """Interpolate at 0. With ``t`` or more shares of one split this is the secret; with fewer, garbage."""
    xs = [x for x, _ in shares]
    _check_points(xs)
    for _, y in shares:
        if not _is_field_element(y):
            raise SecAggError(f"share value {y!r} is not a field element")
    coefficients = _lagrange_at_zero(xs)
    return sum(c * y for c, (_, y) in zip(coefficients, shares, strict=True)) % FIELD_PRIME


def _check_fixed_point(scale: float, clip_range: float) -> None:
    for label, value in (("scale", scale), ("clip_range", clip_range)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise SecAggError(f"{label} must be a positive finite number, got {value!r}")
    if clip_range * scale < 1:
        raise SecAggError(f"clip_range * scale = {clip_range * scale} < 1: every value would encode to 0")
    if clip_range * scale >= RING_HALF:
        raise SecAggError(f"clip_range * scale = {clip_range * scale} >= 2**31: one value does not fit in int32")


def check_no_wrap(n_clients: int, *, scale: float, clip_range: float) -> None:
    """Refuse parameters where the sum of ``n_clients`` encoded values could wrap: need ``n * R * scale < 2**31``."""
    _check_fixed_point(scale, clip_range)
    if n_clients * clip_range * scale >= RING_HALF:
        raise SecAggError(
            f"the sum of {n_clients} inputs could wrap around 2**32: n * clip_range * scale = "
            f"{n_clients * clip_range * scale:.6g} >= 2**31; lower scale or clip_range"
        )


def fixed_point_encode(values: npt.ArrayLike, *, scale: float, clip_range: float) -> npt.NDArray[np.uint32]:
    """``round(clip(x, -R, R) * scale)`` mod 2**32, as uint32. The error is below ``1 / scale`` after clipping."""
    _check_fixed_point(scale, clip_range)
    x = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise SecAggError("cannot encode a vector with NaN or infinite values")
    # Bound the integers by floor(R * scale) so that n of them sum below 2**31 whatever the rounding.
    limit = float(math.floor(clip_range * scale))
    quantized = np.clip(np.rint(np.clip(x, -clip_range, clip_range) * scale), -limit, limit)
    return quantized.astype(np.int32).view(np.uint32)


def fixed_point_decode(values: npt.NDArray[np.uint32], *, scale: float) -> npt.NDArray[np.float64]:
    """Read uint32 values as two's-complement int32 and divide by ``scale``."""
    array = np.asarray(values)
    if array.dtype != np.uint32:
        raise SecAggError(f"fixed-point values must be uint32, got {array.dtype}")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
        raise SecAggError(f"scale must be a positive finite number, got {scale!r}")
    return array.view(np.int32).astype(np.float64) / scale


def prg_uint32(seed: bytes, length: int) -> npt.NDArray[np.uint32]:
    """Expand a 32-byte seed to ``length`` uint32: AES-256-CTR keystream from counter 0, little-endian words."""
    if not isinstance(seed, bytes) or len(seed) != SECRET_BYTES:
        raise SecAggError(f"a PRG seed must be {SECRET_BYTES} bytes")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(4 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32)


def _info(label: str, *fields: str) -> bytes:
    parts = [PROTOCOL_LABEL, label.encode("ascii")]
    for field in fields:
        data = field.encode("utf-8")
        parts.append(struct.pack(">I", len(data)))
        parts.append(data)
    return b"".join(parts)


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def _exchange(private: X25519PrivateKey, public: bytes, who: str) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise SecAggError(f"client {who!r}: public key is invalid for X25519 ({exc})") from exc


def _pair_seed(private: X25519PrivateKey, peer_public: bytes, aggregation_id: str, a: str, b: str) -> bytes:
    low, high = sorted((a, b))
    return _hkdf(_exchange(private, peer_public, b), _info("pair-mask", aggregation_id, low, high))


def _share_key(
    private: X25519PrivateKey, peer: Advertisement, aggregation_id: str, sender: str, recipient: str
) -> bytes:
    shared = _exchange(private, peer.c_public, peer.sender)
    return _hkdf(shared, _info("share-key", aggregation_id, sender, recipient))


def _commit(seed: bytes, aggregation_id: str, sender: str) -> bytes:
    return hashlib.sha256(_info("seed-commitment", aggregation_id, sender) + seed).digest()


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


# ------------------------------------------------------------------------------------------------ client


class SecAggClient:
    """One site's side of an aggregation. Call ``advertise``, ``share``, ``mask``, ``unmask`` in order, once each."""

    def __init__(
        self,
        name: str,
        aggregation_id: str,
        vector_length: int,
        *,
        scale: float = DEFAULT_SCALE,
        clip_range: float = DEFAULT_CLIP_RANGE,
        rng: RandomBytes | None = None,
    ) -> None:
        self.name = _check_name(name, "client name")
        self.aggregation_id = _check_name(aggregation_id, "aggregation id")
        self.vector_length = _check_length(vector_length)
        _check_fixed_point(scale, clip_range)
        self.scale = float(scale)
        self.clip_range = float(clip_range)
        self._rng: RandomBytes = rng or os.urandom
        self._c_key: X25519PrivateKey | None = X25519PrivateKey.from_private_bytes(self._rng(SECRET_BYTES))
        self._s_key: X25519PrivateKey | None = X25519PrivateKey.from_private_bytes(self._rng(SECRET_BYTES))
        self._advertisement = Advertisement(
            aggregation_id=self.aggregation_id,
            sender=self.name,
            c_public=self._c_key.public_key().public_bytes_raw(),
            s_public=self._s_key.public_key().public_bytes_raw(),
        )
        self._roster: Roster | None = None
        self._index: dict[str, int] = {}
        self._self_seed: bytes | None = None
        self._held: dict[str, tuple[int, int]] = {}
        self._peers: tuple[str, ...] = ()
        self._stage = "new"

    def _fail(self, reason: str) -> SecAggError:
        return SecAggError(f"client {self.name!r} in aggregation {self.aggregation_id!r}: {reason}")

    def _expect(self, stage: str, step: str) -> None:
        if self._stage != stage:
            raise self._fail(f"{step} called out of order (state is {self._stage!r}, needs {stage!r})")

    def advertise(self) -> Advertisement:
        """Step 1: the two public keys. Repeatable until ``share``."""
        self._expect("new", "advertise()")
        return self._advertisement

    def share(self, roster: Roster) -> list[EncryptedShare]:
        """Step 2: split ``b`` and ``s`` and seal one pair of shares for every roster member (itself included)."""
        self._expect("new", "share()")
        try:
            index = _check_roster(roster, self.aggregation_id)
        except SecAggError as exc:
            raise self._fail(str(exc)) from exc
        if index.get(self.name) is None or roster.advertisements[index[self.name]] != self._advertisement:
            raise self._fail("not on the roster, or the roster carries other keys under its name")
        n = len(index)
        check_no_wrap(n, scale=self.scale, clip_range=self.clip_range)
        assert self._c_key is not None and self._s_key is not None
        self._self_seed = self._rng(SECRET_BYTES)
        b_shares = shamir_split(int.from_bytes(self._self_seed, "big"), n, roster.threshold, rng=self._rng)
        s_shares = shamir_split(
            int.from_bytes(self._s_key.private_bytes_raw(), "big"), n, roster.threshold, rng=self._rng
        )
        sealed = []
        for ad in roster.advertisements:
            position = index[ad.sender]
            plaintext = b_shares[position][1].to_bytes(FIELD_BYTES, "big") + s_shares[position][1].to_bytes(
                FIELD_BYTES, "big"
            )
            key = _share_key(self._c_key, ad, self.aggregation_id, self.name, ad.sender)
            nonce = self._rng(NONCE_BYTES)
            aad = _info("share-aad", self.aggregation_id, self.name, ad.sender)
            sealed.append(
                EncryptedShare(
                    aggregation_id=self.aggregation_id,
                    sender=self.name,
                    recipient=ad.sender,
                    nonce=nonce,
                    ciphertext=AESGCM(key).encrypt(nonce, plaintext, aad),
                )
            )
        self._roster = roster
        self._index = index
        self._stage = "shared"
        return sealed

    def _open(self, share: EncryptedShare) -> tuple[int, int]:
        assert self._roster is not None and self._c_key is not None
        if not isinstance(share, EncryptedShare):
            raise self._fail(f"expected an EncryptedShare, got {type(share).__name__}")
        if share.aggregation_id != self.aggregation_id:
            raise self._fail(f"share from {share.sender!r} is for aggregation {share.aggregation_id!r}")
        if share.recipient != self.name:
            raise self._fail(f"share from {share.sender!r} is addressed to {share.recipient!r}")
        if share.sender not in self._index:
            raise self._fail(f"share from unknown sender {share.sender!r}")
        if not isinstance(share.nonce, bytes) or not isinstance(share.ciphertext, bytes):
            raise self._fail(f"share from {share.sender!r}: nonce and ciphertext must be bytes")
        peer = self._roster.advertisements[self._index[share.sender]]
        key = _share_key(self._c_key, peer, self.aggregation_id, share.sender, self.name)
        aad = _info("share-aad", self.aggregation_id, share.sender, self.name)
        try:
            plaintext = AESGCM(key).decrypt(share.nonce, share.ciphertext, aad)
        except (InvalidTag, ValueError) as exc:
            raise self._fail(f"share from {share.sender!r} failed authentication (tampered or misrouted)") from exc
        if len(plaintext) != _SHARE_PLAINTEXT_BYTES:
            raise self._fail(f"share from {share.sender!r} has {len(plaintext)} bytes, not {_SHARE_PLAINTEXT_BYTES}")
        b_share = int.from_bytes(plaintext[:FIELD_BYTES], "big")
        s_share = int.from_bytes(plaintext[FIELD_BYTES:], "big")
        if not (_is_field_element(b_share) and _is_field_element(s_share)):
            raise self._fail(f"share from {share.sender!r} is not a field element")
        return b_share, s_share

    def mask(self, vector: npt.ArrayLike, shares_for_me: Sequence[EncryptedShare]) -> MaskedInput:
        """Step 3: open the routed shares (their senders are the participants) and mask the encoded vector."""
        self._expect("shared", "mask()")
        array = np.asarray(vector)
        if array.dtype not in (np.float32, np.float64):
            raise self._fail(f"vector must be float32 or float64, got {array.dtype}")
        if array.ndim != 1 or array.shape[0] != self.vector_length:
            raise self._fail(f"vector has shape {array.shape}, expected ({self.vector_length},)")
        if not np.all(np.isfinite(array)):
            raise self._fail("vector has NaN or infinite values")
        held: dict[str, tuple[int, int]] = {}
        for share in shares_for_me:
            opened = self._open(share)
            if share.sender in held:
                raise self._fail(f"duplicate share from {share.sender!r}")
            held[share.sender] = opened
        assert self._roster is not None and self._s_key is not None and self._self_seed is not None
        if self.name not in held:
            raise self._fail("its own share was not routed back to it")
        if len(held) < self._roster.threshold:
            raise self._fail(
                f"only {len(held)} clients shared, threshold is {self._roster.threshold} "
                f"(short by {self._roster.threshold - len(held)})"
            )
        peers = tuple(sorted(held))
        commitment = _commit(self._self_seed, self.aggregation_id, self.name)
        masked = fixed_point_encode(array, scale=self.scale, clip_range=self.clip_range)
        masked = masked + prg_uint32(self._self_seed, self.vector_length)
        for peer in peers:
            if peer == self.name:
                continue
            public = self._roster.advertisements[self._index[peer]].s_public
            pad = prg_uint32(_pair_seed(self._s_key, public, self.aggregation_id, self.name, peer), self.vector_length)
            masked = masked + pad if self.name < peer else masked - pad
        # The secrets are in the shares now; forget them.
        self._self_seed = None
        self._s_key = None
        self._c_key = None
        self._held = held
        self._peers = peers
        self._stage = "masked"
        return MaskedInput(
            aggregation_id=self.aggregation_id,
            sender=self.name,
            peers=peers,
            seed_commitment=commitment,
            masked=masked,
        )

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Step 4: shares of ``b`` for each survivor, of ``s`` for each dropped client. Answers one request only."""
        self._expect("masked", "unmask()")
        assert self._roster is not None
        if not isinstance(request, UnmaskRequest):
            raise self._fail(f"expected an UnmaskRequest, got {type(request).__name__}")
        if request.aggregation_id != self.aggregation_id:
            raise self._fail(f"unmask request is for aggregation {request.aggregation_id!r}")
        survivors, dropped = tuple(request.survivors), tuple(request.dropped)
        both = sorted(set(survivors) & set(dropped))
        if both:
            raise self._fail(
                f"refusing an unmask request that asks for both the self-mask share and the mask-key share of {both}: "
                "that would reveal their inputs"
            )
        if len(set(survivors)) != len(survivors) or len(set(dropped)) != len(dropped):
            raise self._fail("unmask request names a client twice")
        named = set(survivors) | set(dropped)
        if named != set(self._peers):
            unknown, missing = sorted(named - set(self._peers)), sorted(set(self._peers) - named)
            raise self._fail(f"unmask request does not match the participants (unknown: {unknown}, missing: {missing})")
        if self.name not in survivors:
            raise self._fail("unmask request does not list this client as a survivor")
        if len(survivors) < self._roster.threshold:
            raise self._fail(
                f"only {len(survivors)} survivors, threshold is {self._roster.threshold}: refusing to unmask"
            )
        self._stage = "done"
        return UnmaskResponse(
            aggregation_id=self.aggregation_id,
            sender=self.name,
            self_mask_shares=tuple((name, self._held[name][0]) for name in sorted(survivors)),
            mask_key_shares=tuple((name, self._held[name][1]) for name in sorted(dropped)),
        )


# ------------------------------------------------------------------------------------------------ server


class SecAggServer:
    """The aggregator: ``roster``, ``route``, ``collect`` (one or more times), ``unmask_request``, ``finish``."""

    def __init__(
        self,
        aggregation_id: str,
        vector_length: int,
        threshold: int,
        *,
        scale: float = DEFAULT_SCALE,
        clip_range: float = DEFAULT_CLIP_RANGE,
    ) -> None:
        self.aggregation_id = _check_name(aggregation_id, "aggregation id")
        self.vector_length = _check_length(vector_length)
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 2:
            raise SecAggError(f"threshold must be an int >= 2, got {threshold!r}")
        self.threshold = threshold
        _check_fixed_point(scale, clip_range)
        self.scale = float(scale)
        self.clip_range = float(clip_range)
        self._roster: Roster | None = None
        self._index: dict[str, int] = {}
        self._participants: tuple[str, ...] = ()
        self._masked: dict[str, npt.NDArray[np.uint32]] = {}
        self._commitments: dict[str, bytes] = {}
        self._request: UnmaskRequest | None = None
        self._stage = "new"

    def _fail(self, reason: str) -> SecAggError:
        return SecAggError(f"aggregation {self.aggregation_id!r}: {reason}")

    def _expect(self, stage: str, step: str) -> None:
        if self._stage != stage:
            raise self._fail(f"{step} called out of order (state is {self._stage!r}, needs {stage!r})")

    def _shortfall(self, have: int, what: str) -> SecAggError:
        return self._fail(
            f"only {have} {what}, threshold is {self.threshold} (short by {self.threshold - have}): "
            "the sum cannot be unmasked"
        )

    def roster(self, advertisements: Iterable[Advertisement]) -> Roster:
        """Step 1: validate the advertisements and fix the roster (sorted by name)."""
        self._expect("new", "roster()")
        accepted: dict[str, Advertisement] = {}
        seen_keys: set[bytes] = set()
        probe = X25519PrivateKey.generate()
        for ad in advertisements:
            if not isinstance(ad, Advertisement):
                raise self._fail(f"expected an Advertisement, got {type(ad).__name__}")
            sender = _check_name(ad.sender, "advertisement sender")
            if ad.aggregation_id != self.aggregation_id:
                raise self._fail(f"advertisement from {sender!r} is for aggregation {ad.aggregation_id!r}")
            if sender in accepted:
                raise self._fail(f"duplicate advertisement from {sender!r}")
            for key in (ad.c_public, ad.s_public):
                if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                    raise self._fail(f"advertisement from {sender!r}: public keys must be {KEY_BYTES} bytes")
                if key in seen_keys:
                    raise self._fail(f"advertisement from {sender!r} reuses a public key already advertised")
                seen_keys.add(key)
                _exchange(probe, key, sender)  # refuses low-order points
            accepted[sender] = ad
        if len(accepted) < self.threshold:
            raise self._shortfall(len(accepted), "clients advertised")
        check_no_wrap(len(accepted), scale=self.scale, clip_range=self.clip_range)
        names = sorted(accepted)
        self._roster = Roster(self.aggregation_id, self.threshold, tuple(accepted[name] for name in names))
        self._index = {name: index for index, name in enumerate(names)}
        self._stage = "rostered"
        return self._roster

    def route(self, shares: Iterable[EncryptedShare]) -> dict[str, list[EncryptedShare]]:
        """Step 2: check each bundle is complete, then hand each participant the shares addressed to it."""
        self._expect("rostered", "route()")
        by_sender: dict[str, dict[str, EncryptedShare]] = {}
        for share in shares:
            if not isinstance(share, EncryptedShare):
                raise self._fail(f"expected an EncryptedShare, got {type(share).__name__}")
            if share.aggregation_id != self.aggregation_id:
                raise self._fail(f"share from {share.sender!r} is for aggregation {share.aggregation_id!r}")
            if share.sender not in self._index:
                raise self._fail(f"share from unknown sender {share.sender!r}")
            if share.recipient not in self._index:
                raise self._fail(f"share from {share.sender!r} is addressed to unknown client {share.recipient!r}")
            bundle = by_sender.setdefault(share.sender, {})
            if share.recipient in bundle:
                raise self._fail(f"duplicate share from {share.sender!r} to {share.recipient!r}")
            if not isinstance(share.nonce, bytes) or len(share.nonce) != NONCE_BYTES:
                raise self._fail(f"share from {share.sender!r} has a bad nonce")
            if not isinstance(share.ciphertext, bytes) or len(share.ciphertext) != _SHARE_CIPHERTEXT_BYTES:
                raise self._fail(f"share from {share.sender!r} has a ciphertext of the wrong size")
            bundle[share.recipient] = share
        for sender, bundle in by_sender.items():
            if len(bundle) != len(self._index):
                missing = sorted(set(self._index) - set(bundle))
                raise self._fail(f"client {sender!r} sent an incomplete bundle of shares (missing: {missing})")
        participants = tuple(sorted(by_sender))
        if len(participants) < self.threshold:
            raise self._shortfall(len(participants), "clients sent shares")
        self._participants = participants
        self._stage = "routed"
        return {recipient: [by_sender[sender][recipient] for sender in participants] for recipient in participants}

    def collect(self, masked_inputs: Iterable[MaskedInput]) -> None:
        """Step 3: accept masked inputs (may be called several times before ``unmask_request``)."""
        self._expect("routed", "collect()")
        fresh: dict[str, npt.NDArray[np.uint32]] = {}
        commitments: dict[str, bytes] = {}
        for item in masked_inputs:
            if not isinstance(item, MaskedInput):
                raise self._fail(f"expected a MaskedInput, got {type(item).__name__}")
            if item.aggregation_id != self.aggregation_id:
                raise self._fail(f"masked input from {item.sender!r} is for aggregation {item.aggregation_id!r}")
            if item.sender not in self._participants:
                raise self._fail(f"masked input from {item.sender!r}, which is not a participant")
            if item.sender in self._masked or item.sender in fresh:
                raise self._fail(f"duplicate masked input from {item.sender!r}")
            if tuple(item.peers) != self._participants:
                raise self._fail(f"masked input from {item.sender!r} was masked with other participants")
            masked = item.masked
            if not isinstance(masked, np.ndarray) or masked.dtype != np.uint32 or masked.shape != (self.vector_length,):
                shape = getattr(masked, "shape", None)
                dtype = getattr(masked, "dtype", type(masked).__name__)
                raise self._fail(
                    f"masked input from {item.sender!r} has shape {shape} and dtype {dtype}, "
                    f"expected ({self.vector_length},) uint32"
                )
            if not isinstance(item.seed_commitment, bytes) or len(item.seed_commitment) != hashlib.sha256().digest_size:
                raise self._fail(f"masked input from {item.sender!r} has a malformed seed commitment")
            fresh[item.sender] = masked.copy()
            commitments[item.sender] = item.seed_commitment
        self._masked.update(fresh)
        self._commitments.update(commitments)

    def unmask_request(self) -> UnmaskRequest:
        """Step 4: name the survivors (masked input received) and the dropped participants."""
        self._expect("routed", "unmask_request()")
        survivors = tuple(sorted(self._masked))
        if len(survivors) < self.threshold:
            raise self._shortfall(len(survivors), f"of {len(self._participants)} participants sent masked input")
        dropped = tuple(name for name in self._participants if name not in self._masked)
        self._request = UnmaskRequest(self.aggregation_id, survivors, dropped)
        self._stage = "requested"
        return self._request

    def _check_response(self, response: UnmaskResponse, request: UnmaskRequest) -> None:
        sender = response.sender
        for label, pairs, expected in (
            ("self-mask", response.self_mask_shares, request.survivors),
            ("mask-key", response.mask_key_shares, request.dropped),
        ):
            names = [name for name, _ in pairs]
            if sorted(names) != sorted(expected) or len(set(names)) != len(names):
                raise self._fail(
                    f"unmask response from {sender!r}: {label} shares are for {names}, not {list(expected)}"
                )
            for name, value in pairs:
                if not _is_field_element(value):
                    raise self._fail(
                        f"unmask response from {sender!r}: {label} share for {name!r} is not a field element"
                    )

    def finish(self, responses: Iterable[UnmaskResponse]) -> AggregateResult:
        """Step 4: rebuild the masks from at least ``t`` responses, remove them and decode the sum."""
        self._expect("requested", "finish()")
        request = self._request
        assert request is not None and self._roster is not None
        accepted: dict[str, UnmaskResponse] = {}
        for response in responses:
            if not isinstance(response, UnmaskResponse):
                raise self._fail(f"expected an UnmaskResponse, got {type(response).__name__}")
            if response.aggregation_id != self.aggregation_id:
                raise self._fail(
                    f"unmask response from {response.sender!r} is for aggregation {response.aggregation_id!r}"
                )
            if response.sender not in request.survivors:
                raise self._fail(f"unmask response from {response.sender!r}, which is not a survivor")
            if response.sender in accepted:
                raise self._fail(f"duplicate unmask response from {response.sender!r}")
            self._check_response(response, request)
            accepted[response.sender] = response
        if len(accepted) < self.threshold:
            raise self._shortfall(len(accepted), "unmask responses")
        responders = sorted(accepted)
        weights = _lagrange_at_zero([self._index[name] + 1 for name in responders])

        def rebuild(name: str, shares: Mapping[str, Mapping[str, int]], what: str) -> bytes:
            value = sum(w * shares[r][name] for w, r in zip(weights, responders, strict=True)) % FIELD_PRIME
            if value >= 1 << (8 * SECRET_BYTES):
                raise self._fail(f"the shares of {what} of {name!r} are inconsistent (a response is corrupt)")
            return value.to_bytes(SECRET_BYTES, "big")

        b_shares = {r: dict(accepted[r].self_mask_shares) for r in responders}
        s_shares = {r: dict(accepted[r].mask_key_shares) for r in responders}
        total = np.zeros(self.vector_length, dtype=np.uint32)
        for name in request.survivors:
            seed = rebuild(name, b_shares, "the self mask")
            if not hmac.compare_digest(_commit(seed, self.aggregation_id, name), self._commitments[name]):
                raise self._fail(
                    f"the rebuilt self mask of {name!r} does not match its commitment (a response is corrupt)"
                )
            total = total + self._masked[name] - prg_uint32(seed, self.vector_length)
        for dropped in request.dropped:
            key = X25519PrivateKey.from_private_bytes(rebuild(dropped, s_shares, "the mask key"))
            if key.public_key().public_bytes_raw() != self._roster.advertisements[self._index[dropped]].s_public:
                raise self._fail(f"the rebuilt mask key of {dropped!r} does not match its advertised key")
            for survivor in request.survivors:
                public = self._roster.advertisements[self._index[survivor]].s_public
                pad = prg_uint32(_pair_seed(key, public, self.aggregation_id, dropped, survivor), self.vector_length)
                # The survivor added +pad if its name sorts first, -pad otherwise; undo that.
                total = total - pad if survivor < dropped else total + pad
        self._stage = "done"
        contributors = request.survivors
        return AggregateResult(
            sum=fixed_point_decode(total, scale=self.scale),
            count=len(contributors),
            dropped=tuple(name for name in self._roster.names if name not in contributors),
            contributors=contributors,
        )


# ----------------------------------------------------------------------------------------------- driver


def run_secure_sum(
    vectors: Mapping[str, npt.ArrayLike],
    *,
    threshold: int | None = None,
    drop_after_masking: Iterable[str] = (),
    drop_before_masking: Iterable[str] = (),
    scale: float = DEFAULT_SCALE,
    clip_range: float = DEFAULT_CLIP_RANGE,
    aggregation_id: str = "secure-sum",
    rng: RandomBytes | None = None,
) -> AggregateResult:
    """Run one aggregation in memory.

    ``drop_before_masking``: clients that share but never send masked input; their input is not in the sum.
    ``drop_after_masking``: clients whose masked input arrives but which go silent before unmasking; their
    input is in the sum, rebuilt from the others' shares. ``threshold`` defaults to :func:`default_threshold`.
    """
    names = list(vectors)
    arrays = {name: np.asarray(vectors[name]) for name in names}
    if len(names) < 2:
        raise SecAggError(f"secure aggregation needs at least 2 clients, got {len(names)}")
    lengths = {array.shape for array in arrays.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise SecAggError(f"all vectors must be flat and of one length, got shapes {sorted(lengths)}")
    length = next(iter(lengths))[0]
    after, before = set(drop_after_masking), set(drop_before_masking)
    for label, group in (("drop_after_masking", after), ("drop_before_masking", before)):
        if not group <= set(names):
            raise SecAggError(f"{label} names unknown clients {sorted(group - set(names))}")
    if after & before:
        raise SecAggError(f"clients {sorted(after & before)} cannot drop both before and after masking")
    t = default_threshold(len(names)) if threshold is None else threshold
    server = SecAggServer(aggregation_id, length, t, scale=scale, clip_range=clip_range)
    clients = {
        name: SecAggClient(name, aggregation_id, length, scale=scale, clip_range=clip_range, rng=rng) for name in names
    }
    roster = server.roster([client.advertise() for client in clients.values()])
    routed = server.route([share for client in clients.values() for share in client.share(roster)])
    server.collect([client.mask(arrays[name], routed[name]) for name, client in clients.items() if name not in before])
    request = server.unmask_request()
    return server.finish([clients[name].unmask(request) for name in request.survivors if name not in after])
