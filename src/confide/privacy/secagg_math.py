"""Secure-aggregation primitives, all pure: Shamir sharing over GF(2**521 - 1), fixed-point encoding in
Z_{2^32} and its no-wrap check, the AES-256-CTR PRG, X25519 + HKDF-SHA256 key derivation with the
``confide-secagg/v1`` info framing, the seed commitment hash, and :func:`default_threshold`.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from confide.privacy.secagg_messages import KEY_BYTES, Advertisement, SecAggError

__all__ = [
    "DEFAULT_CLIP_RANGE",
    "DEFAULT_SCALE",
    "FIELD_BYTES",
    "FIELD_PRIME",
    "NONCE_BYTES",
    "PROTOCOL_LABEL",
    "RING_HALF",
    "SECRET_BYTES",
    "RandomBytes",
    "check_no_wrap",
    "default_threshold",
    "fixed_point_decode",
    "fixed_point_encode",
    "prg_uint32",
    "shamir_combine",
    "shamir_split",
]

FIELD_PRIME = 2**521 - 1
FIELD_BYTES = 66
SECRET_BYTES = 32
DEFAULT_SCALE = 2.0**20
DEFAULT_CLIP_RANGE = 4.0
RING_HALF = 2**31
PROTOCOL_LABEL = b"confide-secagg/v1/"

# Sealed shares (AES-256-GCM): a 12-byte nonce; the plaintext is the shares of ``b`` and ``s`` as field elements.
NONCE_BYTES = 12
_TAG_BYTES = 16
_SHARE_PLAINTEXT_BYTES = 2 * FIELD_BYTES
_SHARE_CIPHERTEXT_BYTES = _SHARE_PLAINTEXT_BYTES + _TAG_BYTES

RandomBytes = Callable[[int], bytes]
"""A source of random bytes: ``rng(n)`` returns ``n`` bytes (``os.urandom`` by default)."""


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


# ------------------------------------------------------------------------------------- key derivation


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
