"""The site runner: instruction -> task -> privacy chain -> serde. The privacy boundary of a site.

Whatever goes wrong inside a site (an undecodable instruction, a task that fails, a privacy
filter that refuses) becomes a :class:`~confide.records.Failure` message with a reason. An
update only leaves through the privacy chain; if the chain fails, nothing but the reason leaves.

Under any differential-privacy setting the answer carries nothing data-dependent beyond the noised update
(:mod:`confide.site.release` lists every field), and evaluation requests are refused.

Secure-aggregation steps (:class:`~confide.records.Control` records) go to :class:`~confide.site.secure.SecureSite`,
which trains through the same path and sends the filtered update only masked. A site whose privacy asks for secure
aggregation (``secure_aggregation=True``, from the job or its own policy) refuses a plain training instruction.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from confide import serde
from confide.errors import ConfideError, PrivacyError
from confide.privacy.filter import FilterChain
from confide.privacy.ledger import Ledger
from confide.privacy.secagg_identity import SiteIdentity
from confide.privacy.spend import Spend
from confide.records import Arrays, Control, EvalIns, Failure, Record, TrainIns, TrainRes
from confide.server.sampling import RATE_KEY
from confide.site.release import DP_EVALUATION_REFUSAL, release
from confide.site.release_log import ReleaseLog
from confide.site.secure import SecureSite
from confide.tasks.base import Task

log = logging.getLogger(__name__)


class SiteRunner:
    """Serves one site: decodes instructions, runs its task, filters the update, encodes the answer."""

    def __init__(
        self,
        name: str,
        task: Task,
        *,
        chain: FilterChain | None = None,
        ledger: Ledger | None = None,
        max_bytes: int = serde.DEFAULT_MAX_BYTES,
        secure_aggregation: bool = False,
        job: str = "",
        private: bool | None = None,
        identity: SiteIdentity | None = None,
        min_roster: int = 1,
        releases: ReleaseLog | None = None,
    ) -> None:
        """``private``: whether the site runs under differential privacy (its privacy configuration spends
        privacy); by default, whether its chain or its task's training spends any. ``identity``: the site's key and
        certificate, with which it signs its secure-aggregation keys and checks every roster (without one it
        refuses secure aggregation); ``min_roster``: the fewest verified sites it accepts in an aggregation.
        ``releases``: the site's log of what leaves it (a deployed site's, see deploy.run_site), one line per answer
        written before the answer is handed over."""
        self.name = name
        self.releases = releases
        self.task = task
        self.chain = chain or FilterChain()
        self.ledger = ledger
        self.job = job
        self.private = (
            private
            if private is not None
            else self.chain.private or bool(self._task_spends(TrainIns(round=0, arrays=Arrays(()))))
        )
        self.max_bytes = max_bytes
        self.notices: list[str] = []
        self.secure_aggregation = secure_aggregation
        self.secure = SecureSite(name, self._train, identity=identity, min_roster=min_roster)

    def notice(self, message: str) -> None:
        """A message from the server about this site (for example, why its update was rejected)."""
        log.warning("site %s: the server says: %s", self.name, message)
        self.notices.append(message)

    def handle(self, payload: bytes | memoryview) -> bytes:
        return self.handle_encoded(payload).tobytes()

    def handle_encoded(self, payload: bytes | memoryview) -> serde.Encoded:
        """The answer as buffers that reference the update's arrays (a streaming transport sends them as they are)."""
        charged = len(self.ledger.entries) if self.ledger is not None else 0
        record = self.answer(payload)
        encoded = serde.encode_parts(record)
        if self.releases is not None:  # recorded before it can leave: nothing leaves unrecorded
            filters = self.chain.describe()
            self.releases.record(record, encoded.size, filters=filters, ledger=self.ledger, charged_before=charged)
        return encoded

    def answer(self, payload: bytes | memoryview) -> Record:
        try:
            instruction = serde.decode(payload, max_bytes=self.max_bytes)
        except ConfideError as exc:
            log.warning("site %s: refused an instruction it could not decode: %s", self.name, exc)
            return Failure(round=0, reason=f"site {self.name} could not decode the instruction: {exc}")
        if not isinstance(instruction, TrainIns | EvalIns | Control):
            return Failure(
                round=instruction.round,
                reason=f"site {self.name} cannot act on a {type(instruction).__name__}",
            )
        try:
            if isinstance(instruction, Control):
                return self.secure.answer(instruction)
            if isinstance(instruction, TrainIns):
                if self.secure_aggregation:
                    reason = f"site {self.name} requires secure aggregation: it sends no update in the clear"
                    log.warning("site %s: refused round %d: %s", self.name, instruction.round, reason)
                    return Failure(round=instruction.round, reason=reason, kind="refused")
                return self._train(instruction)
            if self.private:
                reason = f"site {self.name} refused to evaluate: {DP_EVALUATION_REFUSAL}"
                return Failure(round=instruction.round, reason=reason, kind="refused")
            return self.task.evaluate(instruction.arrays, instruction.config, instruction.round)
        except PrivacyError as exc:
            log.warning("site %s: update blocked: %s", self.name, exc)
            return Failure(round=instruction.round, reason=str(exc), kind="refused")
        except Exception as exc:  # the reason goes back to the server; the trace stays in the site's log
            log.exception("site %s: task failed in round %d", self.name, instruction.round)
            return Failure(round=instruction.round, reason=f"site {self.name}: {type(exc).__name__}: {exc}")

    def spends(self, instruction: TrainIns, contributors: int | None = None) -> list[Spend]:
        """What answering ``instruction`` spends, in the order the mechanisms run: the task's private training
        (DP-SGD), then the chain's filters. ``contributors``: under secure aggregation, the fewest updates in any
        sum the server can unmask (the aggregation's threshold), which sets what distributed noise protects."""
        return [*self._task_spends(instruction), *self.chain.spends(contributors)]

    def _train(self, instruction: TrainIns, contributors: int | None = None) -> TrainRes | Failure:
        """Train, filter, charge the ledger (see :meth:`spends`)."""
        told = told_sampling_rate(instruction)
        if isinstance(told, str):
            log.warning("site %s: refused round %d: %s", self.name, instruction.round, told)
            return Failure(round=instruction.round, reason=f"site {self.name}: {told}", kind="refused")
        spends = [noted_sampling(spend, told) for spend in self.spends(instruction, contributors)]
        if self.ledger is not None:
            refusal = self.ledger.refusal(spends)
            if refusal is not None:
                log.warning("site %s: refused round %d: %s", self.name, instruction.round, refusal)
                return Failure(round=instruction.round, reason=f"site {self.name}: {refusal}", kind="refused")
        t0 = time.perf_counter()
        res = self.task.train(instruction.arrays, instruction.config, instruction.round)
        task_seconds = time.perf_counter() - t0
        filtered = self.chain.apply(res)  # privacy randomness from the OS CSPRNG, fresh for this update
        meta: dict[str, float | int | str | bool] = {**filtered.meta, "task_seconds": task_seconds}
        if self.ledger is not None and spends:
            self.ledger.record(instruction.round, spends, job=self.job)
            meta.update(epsilon=self.ledger.epsilon, delta=self.ledger.delta)
        return release(replace(filtered, meta=meta), private=self.private or bool(spends))

    def _task_spends(self, instruction: TrainIns) -> list[Spend]:
        """What the task's own private training (DP-SGD) will spend this round, if it does any."""
        spend = getattr(self.task, "privacy_spend", None)
        return list(spend(instruction.config)) if callable(spend) else []


def told_sampling_rate(instruction: TrainIns) -> float | str | None:
    """The share of sites the server says it sampled this round (None: it sampled none, every site trains), or
    why the value cannot be one."""
    rate = instruction.config.get(RATE_KEY)
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1:
        return f"the instruction's {RATE_KEY} must be a number in (0, 1], got {str(rate)[:40]!r}"
    return float(rate)


def noted_sampling(spend: Spend, rate: float | None) -> Spend:
    """The spend with the site-sampling rate the server told, noted for the ledger and never used by it: the
    server chose the sample and sees who took part, so sampling sites amplifies nothing against the server, and
    the site cannot check that the sample was drawn at all (DESIGN.md rule 7). The spend's own ``sampling_rate``
    (DP-SGD's sampling of examples, drawn at the site) is what the accountant uses."""
    if rate is None:
        return spend
    return replace(spend, params={**spend.params, RATE_KEY: rate, "site_sampling_amplification": "none"})
