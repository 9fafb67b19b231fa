"""One site's side of secure aggregation: :class:`SecAggClient` makes its two X25519 key pairs, Shamir-splits
its self-mask seed and mask key and seals one pair of shares for every roster member, opens the shares routed
to it, masks its fixed-point vector with the self mask and the pairwise masks, and answers one unmask request
with the shares the server may have. The protocol it follows is described in :mod:`confide.privacy.secagg`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from confide.privacy.secagg_math import (
    _SHARE_PLAINTEXT_BYTES,
    DEFAULT_CLIP_RANGE,
    DEFAULT_SCALE,
    FIELD_BYTES,
    NONCE_BYTES,
    SECRET_BYTES,
    RandomBytes,
    _check_fixed_point,
    _commit,
    _info,
    _is_field_element,
    _pair_seed,
    _share_key,
    check_no_wrap,
    fixed_point_encode,
    prg_uint32,
    shamir_split,
)
from confide.privacy.secagg_messages import (
    Advertisement,
    EncryptedShare,
    MaskedInput,
    Roster,
    SecAggError,
    UnmaskRequest,
    UnmaskResponse,
    _check_length,
    _check_name,
    _check_roster,
)

__all__ = ["SecAggClient"]


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
        if index.get(self.name) is None or not roster.advertisements[index[self.name]].same_keys(self._advertisement):
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
