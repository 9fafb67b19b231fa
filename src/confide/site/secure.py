"""One site's side of secure-aggregation rounds: a :class:`~confide.privacy.secagg.SecAggClient` per aggregation,
kept between the round's five exchanges, so that the update leaves the site only masked.

The steps, in this order and once each (anything else is refused and ends the site's part in the aggregation):

1. ``secagg/advertise``: make the client (fresh keys), answer its two public keys signed with the site's
   provisioned key, with its certificate (:mod:`confide.privacy.secagg_identity`); an aggregation id this site
   has already advertised keys for is refused;
2. ``secagg/roster``: check the roster (:mod:`confide.site.roster_check`: every member a site of the federation,
   its certificate not revoked and naming it, its signature over its keys for this aggregation and round; at
   least ``min_roster`` members, a threshold above half of them and at least ``min_roster``), then answer the
   sealed shares. Nothing is shared with a roster that fails any check;
3. ``secagg/train``: train and filter exactly as a plain round does (the budget check first, the privacy chain,
   the ledger), with the verified threshold as the fewest contributors to any sum the server can unmask; flatten
   the dense update into one float vector in the model's array order, mask it with the shares routed here,
   answer the masked vector with the number of examples and the metrics in clear;
4. ``secagg/confirm``: sign the survivor set the server names (the participants split into survivors and dropped,
   this site a survivor, at least the threshold of survivors); one set per aggregation;
5. ``secagg/unmask``: answer the shares the server may have, once, and only for the set this site signed and
   with the signatures of at least the threshold of survivors over that same set (the consistency check of
   Bonawitz et al.: every site that answers was shown the same survivors).

A site without an identity (``identity=None``) refuses every aggregation at the first step.

Under secure aggregation the server sums the updates with equal weights: it cannot weigh what it cannot see,
and it divides the sum by the number of sites in it. Entries beyond the fixed point's range (``clip_range``) are
clipped; the site logs how many. Only meta that describes the site's privacy (filters run, epsilon spent) and
its timing travels in clear: nothing that describes the update itself (such as its norm before clipping).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from confide.errors import ConfigError, PayloadError
from confide.privacy.secagg import (
    Advertisement,
    RandomBytes,
    Roster,
    SecAggClient,
    SecAggError,
    SurvivorCheck,
    SurvivorSignature,
    UnmaskRequest,
)
from confide.privacy.secagg_identity import SiteIdentity, sign_advertisement, sign_survivors
from confide.privacy.secagg_wire import (
    TOPICS,
    MaskedTrainRes,
    SecAggSetup,
    SecureTrainIns,
    pack,
    pack_masked,
    pack_shares,
    unpack,
)
from confide.records import Control, Failure, Record, SparseArrays, TrainIns, TrainRes
from confide.site.roster_check import VerifiedRoster, check_confirmations, check_survivors, verify_roster
from confide.strategies.aggregate import flatten

log = logging.getLogger(__name__)

Train = Callable[[TrainIns, int | None], TrainRes | Failure]
"""The site's plain training path, ``train(instruction, contributors)``; ``contributors`` is the fewest masked
updates that any sum of this aggregation the server can unmask holds: its verified threshold."""

SHARED_META = frozenset({"filters", "epsilon", "delta", "task_seconds", "dp_clip", "dp_noise_std"})
"""Meta keys a masked update carries in clear: how the site protected it, never what it holds."""

_NEXT = {  # the step each topic needs the aggregation to be at
    TOPICS[Roster]: "advertised",
    TOPICS[SecureTrainIns]: "shared",
    TOPICS[SurvivorCheck]: "masked",
    TOPICS[UnmaskRequest]: "confirmed",
}


@dataclass
class _Aggregation:
    round: int
    setup: SecAggSetup
    client: SecAggClient
    advertisement: Advertisement  # signed, as sent
    stage: str = "advertised"
    roster: VerifiedRoster | None = None
    threshold: int = 0  # the verified roster's threshold: no sum of fewer masked updates can be unmasked
    peers: tuple[str, ...] = ()  # the participants this site masked its update with
    signed: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # the survivor set (and dropped) it signed


class SecureSite:
    """The secure-aggregation steps of one site. ``train`` is the site's plain training path (budget, task,
    privacy chain, ledger), which returns the filtered update or a refusal; it is called with the aggregation's
    verified threshold. ``identity``: the site's key, certificate, federation CA and revocation list (from its
    kit, or the simulator's in-memory federation); without one the site refuses every aggregation.
    ``min_roster``: the fewest verified sites, and the smallest threshold, this site accepts in an aggregation
    (its privacy policy's minimum). ``now``: the clock certificates and revocation lists are checked against."""

    def __init__(
        self,
        name: str,
        train: Train,
        *,
        identity: SiteIdentity | None = None,
        min_roster: int = 1,
        rng: RandomBytes | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        if isinstance(min_roster, bool) or not isinstance(min_roster, int) or min_roster < 1:
            raise ConfigError(f"min_roster of site {name!r} must be an integer >= 1, got {min_roster!r}")
        if identity is not None and identity.name != name:
            raise ConfigError(f"site {name!r} was given the identity of site {identity.name!r}")
        self.name = name
        self.identity = identity
        self.min_roster = min_roster
        self._train = train
        self._rng = rng
        self._now = now or (lambda: datetime.now(UTC))
        self._current: _Aggregation | None = None
        self._joined: set[str] = set()  # aggregation ids this site advertised keys for: never twice
        self._revocations = b""  # the newest revocation list accepted so far: a floor the server cannot lower

    def _refuse(self, round: int, reason: str) -> Failure:
        log.warning("site %s: secure aggregation, round %d: %s", self.name, round, reason)
        return Failure(round=round, reason=f"site {self.name}: {reason}", kind="refused")

    def answer(self, control: Control) -> Record:
        """The answer to one step. Whatever goes wrong ends this site's part in the aggregation."""
        current, self._current = self._current, None  # put back only when the step succeeds
        try:
            if control.topic == TOPICS[SecAggSetup]:
                return self._advertise(control)
            expected = _NEXT.get(control.topic)
            if expected is None:
                return self._refuse(control.round, f"unknown secure-aggregation step {control.topic!r}")
            if current is None or current.stage != expected or current.round != control.round:
                state = "none under way" if current is None else f"round {current.round} at {current.stage!r}"
                return self._refuse(
                    control.round,
                    f"secure-aggregation step {control.topic!r} of round {control.round} is out of order "
                    f"(needs an aggregation at {expected!r}; {state})",
                )
            if control.topic == TOPICS[Roster]:
                return self._share(current, control)
            if control.topic == TOPICS[SecureTrainIns]:
                return self._mask(current, control)
            if control.topic == TOPICS[SurvivorCheck]:
                return self._confirm(current, control)
            return self._unmask(current, control)
        except (PayloadError, SecAggError) as exc:
            return self._refuse(control.round, f"secure aggregation refused: {exc}")

    def _check_id(self, current: _Aggregation, aggregation_id: str) -> None:
        if aggregation_id != current.setup.aggregation_id:
            raise SecAggError(
                f"message for aggregation {aggregation_id!r}, this site is in {current.setup.aggregation_id!r}"
            )

    def _advertise(self, control: Control) -> Record:
        setup = unpack(control, SecAggSetup)
        if self.identity is None:
            return self._refuse(
                control.round,
                "secure aggregation refused: this site has no identity (a key and a certificate from the federation "
                "CA) to sign its keys with, so other sites could not tell it from a client of the server",
            )
        if setup.aggregation_id in self._joined:
            return self._refuse(
                control.round, f"secure aggregation refused: aggregation {setup.aggregation_id!r} was run before"
            )
        client = SecAggClient(
            self.name,
            setup.aggregation_id,
            setup.vector_length,
            scale=setup.scale,
            clip_range=setup.clip_range,
            rng=self._rng,
        )
        advertisement = sign_advertisement(self.identity, client.advertise(), control.round)
        self._joined.add(setup.aggregation_id)
        self._current = _Aggregation(control.round, setup, client, advertisement)
        return pack(control.round, advertisement)

    def _share(self, current: _Aggregation, control: Control) -> Control:
        roster = unpack(control, Roster)
        self._check_id(current, roster.aggregation_id)
        assert self.identity is not None  # no aggregation starts without one
        verified = verify_roster(
            roster,
            self.identity,
            round=current.round,
            own=current.advertisement,
            min_roster=self.min_roster,
            accepted_revocations=self._revocations,
            now=self._now(),
        )
        self._revocations = verified.revocation.data
        shares = current.client.share(roster)
        current.roster, current.threshold = verified, verified.threshold
        current.stage = "shared"
        self._current = current
        return pack_shares(control.round, current.setup.aggregation_id, shares)

    def _mask(self, current: _Aggregation, control: Control) -> Record:
        ins = unpack(control, SecureTrainIns)
        self._check_id(current, ins.aggregation_id)
        res = self._train(ins.train, current.threshold)
        if isinstance(res, Failure):
            return res
        if isinstance(res.update, SparseArrays):
            return self._refuse(control.round, "a sparse update cannot be masked (secure aggregation sums every entry)")
        try:
            vector = flatten(res.update, ins.train.arrays)
        except ValueError as exc:
            return self._refuse(control.round, f"the update does not fit the model: {exc}")
        clipped = int(np.count_nonzero(np.abs(vector) > current.setup.clip_range))
        if clipped:
            log.warning(
                "site %s: %d update entries exceed the secure-aggregation range +-%g and are clipped",
                self.name,
                clipped,
                current.setup.clip_range,
            )
        masked = current.client.mask(vector, ins.shares)
        current.peers = masked.peers
        current.stage = "masked"
        self._current = current
        meta = {key: value for key, value in res.meta.items() if key in SHARED_META}
        return pack_masked(control.round, MaskedTrainRes(masked, res.num_examples, res.metrics, meta))

    def _confirm(self, current: _Aggregation, control: Control) -> Control:
        check = unpack(control, SurvivorCheck)
        self._check_id(current, check.aggregation_id)
        survivors, dropped = tuple(check.survivors), tuple(check.dropped)
        check_survivors(survivors, dropped, peers=current.peers, me=self.name, threshold=current.threshold)
        assert self.identity is not None  # no aggregation starts without one
        agg = current.setup.aggregation_id
        signature = sign_survivors(self.identity, agg, current.round, survivors, dropped)
        current.signed = (survivors, dropped)
        current.stage = "confirmed"
        self._current = current
        return pack(control.round, SurvivorSignature(agg, self.name, signature))

    def _unmask(self, current: _Aggregation, control: Control) -> Control:
        request = unpack(control, UnmaskRequest)
        self._check_id(current, request.aggregation_id)
        survivors, dropped = tuple(request.survivors), tuple(request.dropped)
        if (survivors, dropped) != current.signed:
            raise SecAggError(
                "the unmask request names other survivors or dropped participants than the set this site signed"
            )
        assert current.roster is not None
        check_confirmations(
            tuple(request.signatures),
            current.roster,
            aggregation_id=current.setup.aggregation_id,
            round=current.round,
            survivors=survivors,
            dropped=dropped,
        )
        return pack(control.round, current.client.unmask(request))
