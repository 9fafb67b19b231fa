"""The aggregator's side of secure aggregation: :class:`SecAggServer` validates the advertisements and fixes
the roster, checks every client's bundle of sealed shares and routes them, collects the masked inputs, names the
survivors and the dropped participants, and from at least ``t`` unmask responses rebuilds the self masks and the
dropped clients' mask keys, removes every mask and decodes the sum. The protocol it runs is described in
:mod:`confide.privacy.secagg`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from confide.privacy.secagg_math import (
    _SHARE_CIPHERTEXT_BYTES,
    DEFAULT_CLIP_RANGE,
    DEFAULT_SCALE,
    FIELD_PRIME,
    NONCE_BYTES,
    SECRET_BYTES,
    _check_fixed_point,
    _commit,
    _exchange,
    _is_field_element,
    _lagrange_at_zero,
    _pair_seed,
    check_no_wrap,
    fixed_point_decode,
    prg_uint32,
)
from confide.privacy.secagg_messages import (
    KEY_BYTES,
    Advertisement,
    AggregateResult,
    EncryptedShare,
    MaskedInput,
    Roster,
    SecAggError,
    UnmaskRequest,
    UnmaskResponse,
    _check_length,
    _check_name,
)

__all__ = ["SecAggServer"]


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
        # The masked inputs are only ever summed: keep their running sum mod 2**32, not one vector per client.
        self._received: set[str] = set()
        self._masked_sum = np.zeros(self.vector_length, dtype=np.uint32)
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
        """Step 3: accept masked inputs (may be called several times before ``unmask_request``). A call either
        accepts all its inputs or, raising, none of them; the inputs are added to a running sum, not kept."""
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
            if item.sender in self._received or item.sender in fresh:
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
            fresh[item.sender] = masked
            commitments[item.sender] = item.seed_commitment
        for masked in fresh.values():
            np.add(self._masked_sum, masked, out=self._masked_sum)  # uint32 arithmetic wraps mod 2**32
        self._received.update(fresh)
        self._commitments.update(commitments)

    def unmask_request(self) -> UnmaskRequest:
        """Step 4: name the survivors (masked input received) and the dropped participants."""
        self._expect("routed", "unmask_request()")
        survivors = tuple(sorted(self._received))
        if len(survivors) < self.threshold:
            raise self._shortfall(len(survivors), f"of {len(self._participants)} participants sent masked input")
        dropped = tuple(name for name in self._participants if name not in self._received)
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
        total = self._masked_sum.copy()
        for name in request.survivors:
            seed = rebuild(name, b_shares, "the self mask")
            if not hmac.compare_digest(_commit(seed, self.aggregation_id, name), self._commitments[name]):
                raise self._fail(
                    f"the rebuilt self mask of {name!r} does not match its commitment (a response is corrupt)"
                )
            total = total - prg_uint32(seed, self.vector_length)
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
