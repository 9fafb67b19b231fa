"""The server's rounds: configure, exchange, check, aggregate, evaluate, checkpoint.

With ``LoopConfig.secure`` set, a round's exchange and aggregation are those of
:class:`~confide.server.secure_round.SecureRound` (secure aggregation: the server sees only the sum of the updates);
configuration, quorum, evaluation and checkpoints stay here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from confide import serde
from confide.errors import BUDGET_REFUSAL, BudgetSpent, ConfideError, RoundFailed
from confide.records import Arrays, EvalIns, EvalRes, Failure, TrainIns, TrainRes
from confide.sanitize import one_line
from confide.server import checkpoint
from confide.server.checkpoint_writer import CheckpointWriter
from confide.server.checks import check_update, reported_seconds
from confide.server.guard import GuardConfig, UpdateGuard
from confide.server.sampling import RATE_KEY, check_fraction, sample_sites
from confide.server.secure_round import SecureRound, SecureSettings, check_secure_strategy
from confide.server.site_time import SiteTime
from confide.server.spill import detached, evict
from confide.strategies.base import Aggregate, Strategy
from confide.transport.base import Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundResult:
    round: int
    sites: tuple[str, ...]
    failures: Mapping[str, str]
    train_metrics: Mapping[str, float]
    eval_metrics: Mapping[str, Mapping[str, float]]
    seconds: float
    site_seconds: float = 0.0  # the sites' own work that kept the round waiting (see server/site_time.py)

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "sites": list(self.sites),
            "failures": dict(self.failures),
            "train_metrics": dict(self.train_metrics),
            "eval_metrics": {site: dict(m) for site, m in self.eval_metrics.items()},
            "seconds": self.seconds,
            "site_seconds": self.site_seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundResult:
        return cls(
            round=int(data["round"]),
            sites=tuple(data["sites"]),
            failures=dict(data["failures"]),
            train_metrics=dict(data["train_metrics"]),
            eval_metrics=dict(data["eval_metrics"]),
            seconds=float(data["seconds"]),
            site_seconds=float(data.get("site_seconds", 0.0)),
        )

    @property
    def coordination_seconds(self) -> float:
        """Round time the sites did not keep waiting (serialising, transport, checks, aggregation): the round's time
        less the slowest site's work where sites work at once, less every site's where they take turns."""
        return max(self.seconds - self.site_seconds, 0.0)


@dataclass(frozen=True)
class Rejection:
    """Why a reply was not aggregated; ``tell_site`` when the site should hear it (its update was refused)."""

    reason: str
    tell_site: bool = True


@dataclass
class _Tally:
    time: SiteTime  # the sites' own work, exchange by exchange
    failures: dict[str, str] = field(default_factory=dict)


@dataclass
class History:
    rounds: list[RoundResult] = field(default_factory=list)
    stopped: str | None = None  # why training ended before its last round (sites' privacy budgets spent)


class RoundEvents(Protocol):
    """Hooks for progress displays and reports."""

    def round_started(self, round: int, sites: list[str]) -> None: ...
    def site_finished(self, round: int, site: str, ok: bool, detail: str) -> None: ...
    def round_finished(self, result: RoundResult, global_arrays: Arrays) -> None: ...


class NoEvents:
    def round_started(self, round: int, sites: list[str]) -> None:
        pass

    def site_finished(self, round: int, site: str, ok: bool, detail: str) -> None:
        pass

    def round_finished(self, result: RoundResult, global_arrays: Arrays) -> None:
        pass


@dataclass(frozen=True)
class LoopConfig:
    rounds: int
    min_sites: int = 1
    evaluate_every: int = 0
    deadline_s: float | None = None
    guard: GuardConfig = field(default_factory=GuardConfig)  # norm bound and weight caps (see guard.py)
    checkpoint_dir: Path | None = None
    quorum_retries: int = 0
    retry_wait_s: float = 30.0
    secure: SecureSettings | None = None  # secure aggregation: the server learns only the sum of the updates
    fraction: float = 1.0  # share of the connected sites that train each round (server/sampling.py)
    sample_seed: int = 0  # the job's seed: the same job samples the same sites


class ServerLoop:
    def __init__(
        self,
        strategy: Strategy,
        transport: Transport,
        initial: Arrays,
        config: LoopConfig,
        events: RoundEvents | None = None,
    ) -> None:
        self.strategy = strategy
        self.transport = transport
        self.global_arrays = initial
        self.config = config
        self.events = events or NoEvents()
        self.history = History()
        self.guard = UpdateGuard(config.guard)
        self._capped: set[str] = set()  # sites told that their count was capped
        self.start_round = 1
        self._writer = None if config.checkpoint_dir is None else CheckpointWriter(config.checkpoint_dir)
        check_fraction(config.fraction)
        if config.secure is not None:
            check_secure_strategy(strategy)
        if config.checkpoint_dir is not None:
            found = checkpoint.load_latest(config.checkpoint_dir)
            if found is not None:
                if not found.arrays.same_layout(initial):
                    raise ConfideError(f"checkpoint in {config.checkpoint_dir} does not fit this job's model")
                saved_by = found.state.get("strategy_name", strategy.name)
                if saved_by != strategy.name:
                    raise ConfideError(
                        f"checkpoint in {config.checkpoint_dir} was written by strategy {saved_by!r}, "
                        f"this job uses {strategy.name!r}"
                    )
                self.global_arrays = found.arrays
                self.strategy.restore(found.strategy)
                self.start_round = found.round + 1
                self.history.rounds = [RoundResult.from_dict(r) for r in found.state.get("history", [])]
                self.guard.restore(found.state.get("guard"))
                log.info("resuming after round %d from %s", found.round, config.checkpoint_dir)

    def run(self) -> History:
        """Every round in turn. A round that misses its quorum because sites' privacy budgets are spent ends
        training there (``history.stopped`` says why); the model of the last completed round stands. Returns once
        the last round's checkpoint is written."""
        try:
            for rnd in range(self.start_round, self.config.rounds + 1):
                try:
                    self._run_with_retries(rnd)
                except BudgetSpent as exc:
                    self.history.stopped = str(exc)
                    log.warning("training stops before round %d of %d: %s", rnd, self.config.rounds, exc)
                    break
        except BaseException:
            self.flush_checkpoint(quietly=True)
            raise
        self.flush_checkpoint()
        return self.history

    def flush_checkpoint(self, *, quietly: bool = False) -> None:
        """Return once the last round's checkpoint is written (run() does this before it returns; a caller of
        run_round() that needs the checkpoint on disk calls it). ``quietly`` while another error is on its way: a
        failed write is then only logged."""
        if self._writer is None:
            return
        try:
            self._writer.wait()
        except ConfideError:
            if not quietly:
                raise

    def _run_with_retries(self, rnd: int) -> RoundResult:
        """A round that misses its quorum is retried after waiting for sites; the model is kept meanwhile."""
        attempt = 0
        while True:
            try:
                return self.run_round(rnd)
            except RoundFailed as exc:
                attempt += 1
                if isinstance(exc, BudgetSpent) or attempt > self.config.quorum_retries:
                    raise
                log.warning(
                    "%s; waiting up to %.0f s for sites, then retrying (attempt %d of %d)",
                    exc,
                    self.config.retry_wait_s,
                    attempt,
                    self.config.quorum_retries,
                )
                wait = getattr(self.transport, "wait_for_sites", None)
                if callable(wait):
                    wait(self.config.min_sites, self.config.retry_wait_s)
                else:
                    time.sleep(self.config.retry_wait_s)

    def run_round(self, rnd: int) -> RoundResult:
        t0 = time.perf_counter()
        connected = self.transport.sites()
        if len(connected) < self.config.min_sites:
            raise RoundFailed(f"round {rnd}: {len(connected)} site(s) connected, the quorum is {self.config.min_sites}")
        sites = self._sample(rnd, connected)
        self.events.round_started(rnd, sites)
        log.info("round %d of %d: %d site(s) take part: %s", rnd, self.config.rounds, len(sites), ", ".join(sites))
        instructions = self._told_rate(self.strategy.configure(rnd, self.global_arrays, sites), len(connected))
        tally = _Tally(SiteTime(concurrent=self.transport.concurrent))
        try:
            if self.config.secure is not None:
                accepted = self._secure(rnd, instructions, self.config.secure, tally)
            else:
                accepted = self._plain(rnd, instructions, tally)
            if len(accepted.sites) < self.config.min_sites:
                raise RoundFailed(
                    f"round {rnd}: {len(accepted.sites)} update(s) accepted, the quorum is {self.config.min_sites}; "
                    f"failures: {tally.failures}"
                )
        except RoundFailed as exc:
            spent = sorted(site for site, reason in tally.failures.items() if BUDGET_REFUSAL in reason)
            if spent:
                raise BudgetSpent(
                    f"round {rnd} missed its quorum of {self.config.min_sites}: the privacy budget of "
                    f"{', '.join(spent)} is spent ({exc})"
                ) from None
            raise
        bad = checkpoint.non_finite(accepted.arrays)
        if bad:  # the previous model stands; nothing non-finite is ever checkpointed or sent
            raise RoundFailed(
                f"round {rnd}: the aggregate of {', '.join(accepted.sites)} holds NaN or infinite values in "
                f"{bad[:3]}; the model of the previous round is kept"
            )
        self.global_arrays = accepted.arrays
        self.guard.end_round()
        eval_metrics: dict[str, Mapping[str, float]] = {}
        if self.config.evaluate_every and rnd % self.config.evaluate_every == 0:
            eval_metrics = self._evaluate(rnd, tally, sites if len(sites) < len(connected) else None)
        result = RoundResult(
            round=rnd,
            sites=accepted.sites,
            failures=tally.failures,
            train_metrics=dict(accepted.metrics),
            eval_metrics=eval_metrics,
            seconds=time.perf_counter() - t0,
            site_seconds=tally.time.seconds,
        )
        self.history.rounds.append(result)
        if self._writer is not None:  # written while the next round runs
            history = [r.to_dict() for r in self.history.rounds]
            state = {"history": history, "strategy_name": self.strategy.name, "guard": self.guard.state()}
            self._writer.submit(rnd, self.global_arrays, state, self.strategy.state())
        log.info(
            "round %d closed in %.2f s (sites' own work %.2f s): accepted %s; left out: %s",
            rnd,
            result.seconds,
            result.site_seconds,
            ", ".join(sorted(result.sites)),
            "; ".join(f"{site}: {reason}" for site, reason in sorted(result.failures.items())) or "none",
        )
        self.events.round_finished(result, self.global_arrays)
        return result

    def _sample(self, rnd: int, connected: list[str]) -> list[str]:
        """The sites that train this round: all connected ones, or a seeded sample of ``config.fraction`` of them
        (at least the quorum; see server/sampling.py)."""
        if self.config.fraction == 1.0:
            return connected
        sites = sample_sites(
            connected, self.config.fraction, self.config.min_sites, seed=self.config.sample_seed, round=rnd
        )
        log.info("round %d: %d of %d connected site(s) sampled", rnd, len(sites), len(connected))
        return sites

    def _told_rate(self, instructions: dict[str, TrainIns], connected: int) -> dict[str, TrainIns]:
        """Under sampling, each instruction tells its site the round's sampling rate (its ledger records it and
        claims no amplification from it: the server chose the sample). One new instruction per distinct one, so
        that each is still encoded once however many sites share it."""
        if self.config.fraction == 1.0:
            return instructions
        rate = len(instructions) / max(connected, 1)
        told: dict[int, TrainIns] = {}
        for ins in instructions.values():
            if id(ins) not in told:
                told[id(ins)] = replace(ins, config={**ins.config, RATE_KEY: rate})
        return {site: told[id(ins)] for site, ins in instructions.items()}

    def _plain(self, rnd: int, instructions: dict[str, TrainIns], tally: _Tally) -> Aggregate:
        """Each update checked on arrival and folded by the strategy."""
        encoded: dict[str, serde.Encoded] = {}
        cache: dict[int, serde.Encoded] = {}
        for site, ins in instructions.items():  # one encoding per distinct instruction, not per site
            if id(ins) not in cache:
                cache[id(ins)] = serde.encode_parts(ins)
            encoded[site] = cache[id(ins)]
        del instructions, cache
        try:
            return self.strategy.aggregate(
                rnd, self.global_arrays, self._checkpoint_first(self._accepted(rnd, encoded, tally))
            )
        except RoundFailed as exc:
            raise RoundFailed(f"{exc}; failures: {tally.failures}" if tally.failures else str(exc)) from None

    def _checkpoint_first(self, accepted: Iterator[tuple[str, TrainRes]]) -> Iterator[tuple[str, TrainRes]]:
        """The round's updates; once they are all in, and before the strategy folds them into its state (which the
        previous round's checkpoint may still be writing), that write is waited for."""
        yield from accepted
        if self._writer is not None:
            self._writer.wait()

    def _secure(
        self, rnd: int, instructions: dict[str, TrainIns], settings: SecureSettings, tally: _Tally
    ) -> Aggregate:
        """Secure aggregation: only the sum of the updates is learnt, checked as a whole (see secure_round)."""
        secure = SecureRound(
            self.transport,
            settings,
            deadline_s=self.config.deadline_s,
            min_sites=self.config.min_sites,
            max_norm=self.config.guard.max_norm,
            on_site=lambda site, ok, detail: self.events.site_finished(rnd, site, ok, detail),
            time=tally.time,
        )
        try:
            return secure.run(rnd, self.global_arrays, instructions)
        finally:
            tally.failures.update(secure.failures)

    def _accepted(
        self, rnd: int, encoded: Mapping[str, serde.Encoded], tally: _Tally
    ) -> Iterator[tuple[str, TrainRes]]:
        """Replies decoded, checked and weighed, in the order they arrive. While the guard has no norm bound for the
        round (the job's first), the first few updates are held (copied out of the transport's buffer) until their
        median gives one."""
        guard = self.guard
        round_sites = list(encoded)
        guard.start_round(round_sites)
        held: list[tuple[str, TrainRes, float, bytes | memoryview | None]] = []
        want = guard.calibration_size(len(round_sites))
        times = tally.time.exchange()
        for reply in self.transport.exchange(encoded, self.config.deadline_s):
            calibrating = guard.calibrating
            # a held update must outlive the transport's buffer: a copy, a large one in a file (server/spill.py)
            data = detached(reply.payload) if calibrating and reply.payload is not None else reply.payload
            outcome = self._reason(rnd, reply.site, data, reply.error)
            if isinstance(outcome, Rejection):
                self._reject(rnd, reply.site, outcome, tally)
                continue
            record, norm = outcome
            times.append(reported_seconds(record.meta.get("task_seconds"), reply.seconds))
            if calibrating:
                evict(data)  # read for its check; out of memory until it is folded
                held.append((reply.site, record, norm, data))
                if len(held) >= want:
                    yield from self._release(rnd, held, round_sites, tally)
                    held = []
                continue
            admitted = self._admit(rnd, reply.site, record, norm, round_sites, tally)
            if admitted is not None:
                yield reply.site, admitted
        if held:
            yield from self._release(rnd, held, round_sites, tally)

    def _release(
        self,
        rnd: int,
        held: list[tuple[str, TrainRes, float, bytes | memoryview | None]],
        round_sites: list[str],
        tally: _Tally,
    ) -> Iterator[tuple[str, TrainRes]]:
        """The held updates give the round its norm bound, are weighed against each other, and go on."""
        self.guard.calibrate(norm for _, _, norm, _ in held)
        if self.guard.bound is not None:
            log.info("round %d: update norm bound %.4g (%d update(s) held to set it)", rnd, self.guard.bound, len(held))
        for site, record, norm, _ in held:
            if self.guard.over_bound(norm) is None:
                self.guard.presume(site, record.num_examples)
        for site, record, norm, data in held:
            admitted = self._admit(rnd, site, record, norm, round_sites, tally)
            if admitted is not None:
                yield site, admitted
                evict(data)  # folded: its pages leave memory now, not when the round's held updates are let go

    def _admit(
        self, rnd: int, site: str, record: TrainRes, norm: float, round_sites: list[str], tally: _Tally
    ) -> TrainRes | None:
        """The update within the norm bound, its count capped (see guard.py); ``None``: refused."""
        too_large = self.guard.over_bound(norm)
        if too_large is not None:
            self._reject(rnd, site, Rejection(f"site {site}: {too_large}"), tally)
            return None
        weight, note = self.guard.weight(site, record.num_examples, round_sites)
        if note is not None and site not in self._capped:  # said once per site; the trail has every round's
            self._capped.add(site)
            log.warning("round %d: site %s: %s (said once; later rounds in the trail)", rnd, site, note)
            self.transport.notify(site, f"round {rnd}: {note}")
        elif note is not None:
            log.info("round %d: site %s: %s", rnd, site, note)
        self.guard.admitted(site, norm, weight)
        self.events.site_finished(rnd, site, True, f"loss {record.metrics.get('loss', float('nan')):.4f}")
        return record if weight == record.num_examples else replace(record, num_examples=weight)

    def _reject(self, rnd: int, site: str, rejection: Rejection, tally: _Tally) -> None:
        reason = one_line(rejection.reason, 500)  # it quotes the site's words: one line, bounded, wherever it goes
        tally.failures[site] = reason
        log.warning("round %d: %s", rnd, reason)
        if rejection.tell_site:
            self.transport.notify(site, f"round {rnd}: {reason}")
        self.events.site_finished(rnd, site, False, reason)

    def _reason(
        self, rnd: int, site: str, payload: bytes | memoryview | None, error: str | None
    ) -> tuple[TrainRes, float] | Rejection:
        """The reply as a checked update and its norm, or why not."""
        if payload is None:
            return Rejection(f"site {site}: {one_line(str(error))}", tell_site=False)
        try:
            record = serde.decode(payload)
        except ConfideError as exc:
            return Rejection(f"site {site}: undecodable reply: {one_line(str(exc))}")
        except Exception as exc:  # the boundary: no reply, however made, takes the server down
            log.exception("round %d: decoding site %s's reply raised", rnd, site)
            return Rejection(f"site {site}: undecodable reply ({type(exc).__name__})")
        if isinstance(record, Failure):
            verb = "refused" if record.kind == "refused" else "failed"
            return Rejection(f"site {site} {verb}: {one_line(record.reason)}", tell_site=False)
        if not isinstance(record, TrainRes):
            return Rejection(f"site {site}: expected a training result, got {type(record).__name__}")
        if record.round != rnd:
            return Rejection(f"site {site}: result for round {record.round} arrived in round {rnd}; discarded")
        try:
            norm = check_update(site, record, self.global_arrays)
        except ConfideError as exc:
            return Rejection(one_line(str(exc)))
        except Exception as exc:  # the boundary: a check that trips over a reply rejects it, never the round
            log.exception("round %d: checking site %s's update raised", rnd, site)
            return Rejection(f"site {site}: update could not be checked ({type(exc).__name__})")
        return record, norm

    def _evaluate(self, rnd: int, tally: _Tally, sampled: list[str] | None = None) -> dict[str, Mapping[str, float]]:
        """Every connected site scores the new model on its own test split; under sampling, the round's sample."""
        payload = serde.encode_parts(EvalIns(round=rnd, arrays=self.global_arrays))
        sites = self.transport.sites()
        if sampled is not None:
            connected = set(sites)
            sites = [site for site in sampled if site in connected]
        out: dict[str, Mapping[str, float]] = {}
        times = tally.time.exchange()
        for reply in self.transport.exchange(dict.fromkeys(sites, payload), self.config.deadline_s):
            times.append(reply.seconds)
            if reply.payload is None:
                continue
            try:
                record = serde.decode(reply.payload)
            except ConfideError as exc:
                log.warning("round %d: site %s's evaluation is unreadable: %s", rnd, reply.site, one_line(str(exc)))
                continue
            except Exception as exc:  # the boundary, as for training replies: no reply takes the server down
                log.exception("round %d: decoding site %s's evaluation raised", rnd, reply.site)
                log.warning("round %d: site %s's evaluation is unreadable (%s)", rnd, reply.site, type(exc).__name__)
                continue
            if isinstance(record, EvalRes):
                out[reply.site] = {"loss": record.loss, **record.metrics}
        return out
