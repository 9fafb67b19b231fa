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
request that asks for both shares of one client. Both hold only if the roster's clients are real: the core does
not check who a client is, so an :class:`Advertisement` carries a certificate and a signature over its keys
(:mod:`confide.privacy.secagg_identity`) and each site verifies every roster member before it shares
(:mod:`confide.site.roster_check`); a server that makes up clients is refused. Against a server that shows
clients different survivor sets (to unmask a sum of fewer than ``t`` inputs from their answers), the platform adds
the consistency check of Bonawitz et al.: each survivor signs the one set it is shown (:class:`SurvivorCheck`,
:class:`SurvivorSignature`), and answers an :class:`UnmaskRequest` only for that set and only with at least ``t``
survivors' signatures over it. Randomness comes from
``os.urandom`` unless a ``rng`` (a ``Callable[[int], bytes]``) is injected, which tests do for reproducibility only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from confide.privacy.secagg_client import SecAggClient
from confide.privacy.secagg_math import (
    DEFAULT_CLIP_RANGE,
    DEFAULT_SCALE,
    FIELD_PRIME,
    RandomBytes,
    check_no_wrap,
    default_threshold,
    fixed_point_decode,
    fixed_point_encode,
    prg_uint32,
    shamir_combine,
    shamir_split,
)
from confide.privacy.secagg_messages import (
    Advertisement,
    AggregateResult,
    EncryptedShare,
    MaskedInput,
    Roster,
    SecAggError,
    SurvivorCheck,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from confide.privacy.secagg_server import SecAggServer

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
    "SurvivorCheck",
    "SurvivorSignature",
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
