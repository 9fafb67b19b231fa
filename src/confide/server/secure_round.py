"""A secure-aggregation round: the server learns the sum of the sites' updates, never one of them.

:class:`~confide.server.loop.ServerLoop` hands a round to :class:`SecureRound` when the job sets
``privacy.secure_aggregation``. The round is five exchanges over the same transport (the protocol is described in
:mod:`confide.privacy.secagg`, the messages in :mod:`confide.privacy.secagg_wire`, a site's side in
:mod:`confide.site.secure`):

1. **advertise**: every selected site gets the aggregation's id, the vector length (the model's entries) and the
   fixed point; it answers two fresh public keys, signed with its provisioned key, and its certificate. The sites
   whose signature verifies make the roster.
2. **share**: every site on the roster gets it, with the federation's revocation list (``SecureSettings``), checks
   every member (:mod:`confide.site.roster_check`) and answers one sealed share for every member; the server
   routes the complete bundles. Those sites are the participants.
3. **train**: every participant gets the model, the round's config and the shares routed to it; it trains, runs
   its privacy chain, masks the update and answers the masked vector (uniform-looking uint32) with its number of
   examples and metrics in clear. The masked vectors are added as they arrive (memory does not grow with sites).
4. **confirm**: every site whose masked update arrived (a survivor) gets the list of survivors and dropped
   participants and signs it (the consistency check of Bonawitz et al.); at least ``t`` signatures are needed.
5. **unmask**: the survivors that signed get the same lists with the signatures; each checks them and answers its
   shares; from at least ``t`` answers the server removes the masks and decodes the sum.

The next model adds ``sum / count``: under secure aggregation the updates are averaged with **equal weights**
(the server cannot weigh what it cannot see). A site that fails or refuses a step, answers out of turn, speaks under
another name or sends a malformed message is left out from that step on, and the round's failures record why.
A site that fails *before* its masked update arrives is not in the sum; one that fails *after* (at unmask) is: the
others' shares rebuild its mask. Fewer sites than ``t`` (default ``floor(2n/3) + 1`` of the ``n`` that advertised)
or than the quorum at any step fails the round with :class:`~confide.errors.RoundFailed`, keeping the model.

What the server can no longer do: check updates one by one. The checks of :mod:`confide.server.checks` (names,
shapes, finite values, the norm bound) run on the mean update as a whole; a site's clipping (its privacy chain)
is what bounds its own contribution. A corrupt unmask answer fails the round without naming its sender.

Fixed point: each entry is clipped to ``[-clip_range, clip_range]`` (4.0 by default, far beyond a usual model
update) and scaled by ``scale``, largest power of two up to 2**20 (resolution about 1e-6) that keeps the sum of
``n`` sites below 2**31: 2**20 up to 511 sites, 2**19 up to 1023, and so on; the mean is exact to ``0.5 / scale``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from confide import serde
from confide.errors import ConfideError, PayloadError, RoundFailed, UpdateRejected
from confide.privacy.secagg import (
    DEFAULT_CLIP_RANGE,
    DEFAULT_SCALE,
    Advertisement,
    AggregateResult,
    EncryptedShare,
    Roster,
    SecAggError,
    SecAggServer,
    SurvivorCheck,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    check_no_wrap,
    default_threshold,
)
from confide.privacy.secagg_identity import check_signature, check_survivor_signature
from confide.privacy.secagg_wire import (
    MaskedTrainRes,
    SecAggSetup,
    SecureTrainIns,
    pack,
    pack_train,
    unpack,
    unpack_shares,
)
from confide.records import Arrays, Control, Failure, TrainIns, TrainRes
from confide.sanitize import one_line
from confide.server.checks import check_update, reported_seconds
from confide.server.site_time import SiteTime
from confide.strategies.aggregate import apply_delta, model_size, unflatten, weighted_metrics
from confide.strategies.base import Aggregate, Strategy
from confide.transport.base import Transport

log = logging.getLogger(__name__)

SECURE_STRATEGIES = ("fedavg", "dp_fedavg")


def check_secure_strategy(strategy: Strategy) -> None:
    """Refuse a strategy that needs to see single updates (robust aggregation, central DP noise and clipping)."""
    if strategy.name not in SECURE_STRATEGIES:
        raise ConfideError(
            f"secure aggregation gives the server only the sum of the updates: strategy {strategy.name!r} needs "
            f"each update (use one of {list(SECURE_STRATEGIES)})"
        )
    if getattr(strategy, "placement", "site") != "site":
        raise ConfideError("secure aggregation needs the gaussian filter's noise added at the sites (placement: site)")


@dataclass(frozen=True)
class SecureSettings:
    """The fixed point and threshold of secure rounds (see the module's docstring), and the federation's revocation
    list (a CRL the federation CA signed, PEM: ``server/crl.pem`` of the server's kit) sent with every roster."""

    clip_range: float = DEFAULT_CLIP_RANGE
    max_scale: float = DEFAULT_SCALE
    threshold: int | None = None  # None: floor(2n/3) + 1 of the n that advertised; sites refuse one <= n/2
    revocation_list: bytes = b""

    def scale_for(self, sites: int) -> float:
        """The largest power of two up to ``max_scale`` at which the sum of ``sites`` inputs cannot wrap."""
        scale = self.max_scale
        while sites * self.clip_range * scale >= 2**31 and self.clip_range * scale > 2:
            scale /= 2
        check_no_wrap(sites, scale=scale, clip_range=self.clip_range)
        return scale

    def threshold_for(self, sites: int) -> int:
        return default_threshold(sites) if self.threshold is None else self.threshold


class SecureRound:
    """One secure round over ``transport``; ``failures`` and ``time`` are filled as it goes."""

    def __init__(
        self,
        transport: Transport,
        settings: SecureSettings,
        *,
        deadline_s: float | None = None,
        min_sites: int = 1,
        max_norm: float | None = None,
        on_site: Callable[[str, bool, str], None] | None = None,
        time: SiteTime | None = None,
    ) -> None:
        self.transport = transport
        self.settings = settings
        self.deadline_s = deadline_s
        self.quorum = min_sites
        self.min_sites = max(2, min_sites)
        self.max_norm = max_norm
        self.on_site = on_site or (lambda site, ok, detail: None)
        self.failures: dict[str, str] = {}
        self.time = time or SiteTime(concurrent=transport.concurrent)  # the sites' own work, step by step
        self._certificates: dict[str, x509.Certificate] = {}  # each site's, from its signed advertisement

    def run(self, rnd: int, global_arrays: Arrays, instructions: Mapping[str, TrainIns]) -> Aggregate:
        """The round's aggregate (the next model, the sites in the sum), or RoundFailed naming the shortfall."""
        self._need(rnd, len(instructions), "selected")
        try:
            scale = self.settings.scale_for(len(instructions))
            setup = SecAggSetup(
                f"round-{rnd}-{secrets.token_hex(8)}", model_size(global_arrays), scale, self.settings.clip_range
            )
            return self._run(rnd, global_arrays, instructions, setup)
        except SecAggError as exc:
            raise self._failed(rnd, str(exc)) from None

    # ------------------------------------------------------------------------------------------ the steps

    def _run(
        self, rnd: int, global_arrays: Arrays, instructions: Mapping[str, TrainIns], setup: SecAggSetup
    ) -> Aggregate:
        server, roster = self._advertise(rnd, sorted(instructions), setup)
        routed = self._share(rnd, server, roster)
        examples, metrics = self._train(rnd, server, instructions, routed)
        result = self._unmask(rnd, server, self._confirm(rnd, server))
        self._need(rnd, result.count, "are in the sum")
        return self._aggregate(rnd, global_arrays, result.sum / result.count, result.contributors, examples, metrics)

    def _advertise(self, rnd: int, sites: list[str], setup: SecAggSetup) -> tuple[SecAggServer, Roster]:
        """Step 1: the sites' public keys; the aggregator, its roster fixed."""
        message = serde.encode_parts(pack(rnd, setup))
        ads: dict[str, Advertisement] = {}
        seen: set[bytes] = set()
        times = self.time.exchange()
        for site, control, seconds in self._step(rnd, "advertise", dict.fromkeys(sites, message)):
            times.append(seconds)
            with self._left_out(rnd, "advertise", site):
                ad = unpack(control, Advertisement)
                self._check_sender(site, ad.sender, ad.aggregation_id, setup.aggregation_id)
                cert = check_signature(ad, rnd)  # an unsigned site would make every other site refuse the roster
                _check_keys(ad, seen)
                ads[site], self._certificates[site] = ad, cert
        self._need(rnd, len(ads), "advertised keys")
        threshold = self.settings.threshold_for(len(ads))
        server = SecAggServer(
            setup.aggregation_id, setup.vector_length, threshold, scale=setup.scale, clip_range=setup.clip_range
        )
        roster = server.roster(ads.values())
        return server, replace(roster, revocation_list=self.settings.revocation_list)

    def _share(self, rnd: int, server: SecAggServer, roster: Roster) -> dict[str, list[EncryptedShare]]:
        """Step 2: each roster member's complete bundle of sealed shares, routed to the participants."""
        message = serde.encode_parts(pack(rnd, roster))
        bundles: list[EncryptedShare] = []
        shared = 0
        times = self.time.exchange()
        for site, control, seconds in self._step(rnd, "share", dict.fromkeys(roster.names, message)):
            times.append(seconds)
            with self._left_out(rnd, "share", site):
                bundle_id, bundle = unpack_shares(control)
                for share in bundle:
                    self._check_sender(site, share.sender, bundle_id, server.aggregation_id)
                recipients = [share.recipient for share in bundle]
                if sorted(recipients) != list(roster.names):
                    raise SecAggError(f"its shares are not one for every roster member: {recipients[:5]}")
                bundles.extend(bundle)
                shared += 1
        self._need(rnd, shared, "sent their shares")
        return server.route(bundles)

    def _train(
        self,
        rnd: int,
        server: SecAggServer,
        instructions: Mapping[str, TrainIns],
        routed: Mapping[str, list[EncryptedShare]],
    ) -> tuple[dict[str, int], dict[str, Mapping[str, float]]]:
        """Step 3: the participants' masked updates, added to the aggregator's running sum as they arrive."""
        agg = server.aggregation_id
        messages = {
            site: serde.encode_parts(pack_train(SecureTrainIns(ins, agg, tuple(routed[site]))))
            for site, ins in instructions.items()
            if site in routed
        }
        examples: dict[str, int] = {}
        metrics: dict[str, Mapping[str, float]] = {}
        times = self.time.exchange()
        for site, control, seconds in self._step(rnd, "train", messages):
            with self._left_out(rnd, "train", site):
                res = unpack(control, MaskedTrainRes)
                self._check_sender(site, res.masked.sender, res.masked.aggregation_id, agg)
                if res.num_examples <= 0:
                    raise SecAggError("its update reports no training examples")
                took = reported_seconds(res.meta.get("task_seconds"), seconds)  # read before the sum takes it
                server.collect([res.masked])  # checked whole, then added to the running sum
                examples[site], metrics[site] = res.num_examples, res.metrics
                times.append(took)
                self.on_site(site, True, f"masked update, loss {res.metrics.get('loss', float('nan')):.4f}")
        self._need(rnd, len(examples), "sent masked updates")
        return examples, metrics

    def _confirm(self, rnd: int, server: SecAggServer) -> UnmaskRequest:
        """Step 4: the survivors' signatures over the survivor set; the unmask request, carrying them."""
        request = server.unmask_request()
        agg, survivors, dropped = server.aggregation_id, request.survivors, request.dropped
        message = serde.encode_parts(pack(rnd, SurvivorCheck(agg, survivors, dropped)))
        signatures: dict[str, bytes] = {}
        times = self.time.exchange()
        for site, control, seconds in self._step(rnd, "confirm", dict.fromkeys(survivors, message)):
            times.append(seconds)
            with self._left_out(rnd, "confirm", site):
                signed = unpack(control, SurvivorSignature)
                self._check_sender(site, signed.sender, signed.aggregation_id, agg)
                check_survivor_signature(
                    self._certificates[site],
                    site,
                    signed.signature,
                    aggregation_id=agg,
                    round=rnd,
                    survivors=survivors,
                    dropped=dropped,
                )
                signatures[site] = signed.signature
        if len(signatures) < server.threshold:
            raise SecAggError(
                f"only {len(signatures)} survivors signed the survivor set, threshold is {server.threshold} "
                f"(short by {server.threshold - len(signatures)}): the sum cannot be unmasked"
            )
        return replace(request, signatures=tuple(sorted(signatures.items())))

    def _unmask(self, rnd: int, server: SecAggServer, request: UnmaskRequest) -> AggregateResult:
        """Step 5: the shares of the masks from the survivors that signed; the sum, unmasked."""
        message = serde.encode_parts(pack(rnd, request))
        responses: list[UnmaskResponse] = []
        signers = [site for site, _ in request.signatures]
        times = self.time.exchange()
        for site, control, seconds in self._step(rnd, "unmask", dict.fromkeys(signers, message)):
            times.append(seconds)
            with self._left_out(rnd, "unmask", site):
                response = unpack(control, UnmaskResponse)
                self._check_sender(site, response.sender, response.aggregation_id, server.aggregation_id)
                _check_response(response, request)
                responses.append(response)
        return server.finish(responses)

    def _aggregate(
        self,
        rnd: int,
        global_arrays: Arrays,
        mean: np.ndarray,
        contributors: tuple[str, ...],
        examples: Mapping[str, int],
        metrics: Mapping[str, Mapping[str, float]],
    ) -> Aggregate:
        """Check the mean update as a whole, then apply it."""
        delta = unflatten(mean, global_arrays)
        total = sum(examples[site] for site in contributors)
        update = Arrays.from_dict({name: delta[name].astype(value.dtype) for name, value in global_arrays.items()})
        try:
            check_update("secure aggregate", TrainRes(rnd, update, total), global_arrays, max_norm=self.max_norm)
        except UpdateRejected as exc:
            raise self._failed(rnd, f"the mean update of {list(contributors)} was rejected: {exc.reason}") from None
        return Aggregate(
            arrays=apply_delta(global_arrays, delta),
            sites=contributors,
            num_examples=total,
            metrics=weighted_metrics((metrics[site], float(examples[site])) for site in contributors),
        )

    # ---------------------------------------------------------------------------------------- bookkeeping

    def _step(self, rnd: int, step: str, messages: Mapping[str, serde.Encoded]) -> Iterator[tuple[str, Control, float]]:
        """Each site's answer to this step as a control record; any other answer leaves the site out."""
        for reply in self.transport.exchange(messages, self.deadline_s):
            if reply.payload is None:
                self._drop(rnd, step, reply.site, reply.error or "no answer", tell=False)
                continue
            try:
                record = serde.decode(reply.payload)
            except ConfideError as exc:
                self._drop(rnd, step, reply.site, f"undecodable answer: {exc}")
                continue
            except Exception as exc:  # the boundary: no answer, however made, takes the server down
                self._drop(rnd, step, reply.site, f"undecodable answer ({type(exc).__name__})")
                continue
            if isinstance(record, Failure):
                verb = "refused" if record.kind == "refused" else "failed"
                self._drop(rnd, step, reply.site, f"{verb}: {one_line(record.reason)}", tell=False)
            elif not isinstance(record, Control) or record.round != rnd:
                got = type(record).__name__ + (f" of round {record.round}" if isinstance(record, Control) else "")
                self._drop(rnd, step, reply.site, f"expected its {step} answer for round {rnd}, got a {got}")
            else:
                yield reply.site, record, reply.seconds

    @contextmanager
    def _left_out(self, rnd: int, step: str, site: str) -> Iterator[None]:
        """A site's malformed or invalid message leaves that site out of the round."""
        try:
            yield
        except (PayloadError, SecAggError) as exc:
            self._drop(rnd, step, site, str(exc))
        except Exception as exc:  # the boundary: whatever a site's message trips, only that site is left out
            log.exception("round %d, %s: site %s's message raised", rnd, step, site)
            self._drop(rnd, step, site, f"its {step} message could not be read ({type(exc).__name__})")

    def _drop(self, rnd: int, step: str, site: str, reason: str, *, tell: bool = True) -> None:
        note = " (its masked update is in the sum)" if step in ("confirm", "unmask") else ""
        message = one_line(f"site {site}: secure aggregation, {step} step: {reason}{note}", 500)
        self.failures[site] = message
        log.warning("round %d: %s", rnd, message)
        if tell:
            self.transport.notify(site, f"round {rnd}: {message}")
        self.on_site(site, False, message)

    @staticmethod
    def _check_sender(site: str, sender: str, aggregation_id: str, expected: str) -> None:
        if sender != site:
            raise SecAggError(f"it speaks as {sender!r}")
        if aggregation_id != expected:
            raise SecAggError(f"its message is for aggregation {aggregation_id!r}, not {expected!r}")

    def _need(self, rnd: int, have: int, what: str) -> None:
        if have < self.min_sites:
            raise self._failed(
                rnd,
                f"only {have} site(s) {what}, short by {self.min_sites - have} of the {self.min_sites} the round "
                f"needs (the quorum is {self.quorum}; secure aggregation needs at least 2)",
            )

    def _failed(self, rnd: int, reason: str) -> RoundFailed:
        detail = f"; failures: {self.failures}" if self.failures else ""
        return RoundFailed(f"round {rnd}: secure aggregation: {reason}{detail}")


def _check_keys(ad: Advertisement, seen: set[bytes]) -> None:
    """Refuse keys another site advertised, a key used twice, or a point X25519 refuses (low order)."""
    if ad.c_public == ad.s_public or {ad.c_public, ad.s_public} & seen:
        raise SecAggError("it advertised a public key twice or one another site advertised")
    probe = X25519PrivateKey.generate()
    for key in (ad.c_public, ad.s_public):
        try:
            probe.exchange(X25519PublicKey.from_public_bytes(key))
        except ValueError as exc:
            raise SecAggError(f"its public key is invalid for X25519 ({exc})") from exc
    seen.update((ad.c_public, ad.s_public))


def _check_response(response: UnmaskResponse, request: UnmaskRequest) -> None:
    """The response names exactly the shares the request asks for (the values are the core's to check)."""
    for label, pairs, expected in (
        ("self-mask", response.self_mask_shares, request.survivors),
        ("mask-key", response.mask_key_shares, request.dropped),
    ):
        names = [name for name, _ in pairs]
        if sorted(names) != sorted(expected) or len(set(names)) != len(names):
            raise SecAggError(f"its {label} shares are for {names[:5]}, not for {list(expected)[:5]}")
