"""The site side of a real deployment: dial out to the server, pull instructions, push answers.

The site never listens: hospitals allow outbound connections only. A dropped connection or a
restarting server is retried with back-off; heartbeats go on in a thread while the site trains.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from confide import serde
from confide.errors import ConfideError, JobFailed, TransportError
from confide.records import Arrays, Failure
from confide.sanitize import one_line
from confide.serde import DEFAULT_MAX_BYTES, Encoded
from confide.transport import framing
from confide.transport.grpc_server import GRPC_OPTIONS, SERVICE
from confide.transport.inmemory import Endpoint

log = logging.getLogger(__name__)

# CANCELLED: the server's watchdog cut a stream that moved nothing for a while (a stalled network); call again
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
}


# gRPC's channel waits 1 s, then longer, before it dials a server that refused it again, and a call made while it
# waits fails at once without dialling: a site started before its server would join a second or more late. The
# site dials again after 0.1 s, and never waits more than 2 s between tries (a refused dial costs next to nothing).
# Not grpc.min_reconnect_backoff_ms: gRPC also takes it as the time a connection attempt may take, and at 100 ms
# no TLS handshake over a link of 100 ms latency ever finished (tests/network/test_bad_network.py).
CLIENT_OPTIONS = [
    *GRPC_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
FIRST_RETRY_S = 0.1  # the first wait of _call's own retries, doubled each time up to MAX_RETRY_S
MAX_RETRY_S = 2.0


class JobDeclined(ConfideError):
    """Raised by a site's ``make_endpoint`` to decline the job it was sent (its operator did not approve it). The
    client answers the server's next instruction with a refusal carrying this reason (a Failure of kind
    "refused": the round goes on without the site, and the server's log says why), then raises it again."""


class SiteClient:
    """Runs one site against a federation server until the server says the job is done."""

    def __init__(
        self,
        address: str,
        *,
        key_pem: bytes,
        cert_pem: bytes,
        ca_pem: bytes,
        make_endpoint: Callable[[dict[str, Any]], Endpoint],
        give_up_after_s: float = 600.0,
        decline_wait_s: float = 300.0,
        push_attempts: int = 3,
        pull_timeout_s: float = 600.0,
        after_done_s: float = 60.0,
    ) -> None:
        self.address = address
        self.make_endpoint = make_endpoint
        self.give_up_after_s = give_up_after_s
        self.decline_wait_s = decline_wait_s  # a declining site waits this long for an instruction to refuse
        self.push_attempts = push_attempts
        self.pull_timeout_s = pull_timeout_s
        self.after_done_s = after_done_s  # how long to retry a server that has said the job is over, then left
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
        )
        self._channel = grpc.secure_channel(address, credentials, options=CLIENT_OPTIONS)
        self._join = self._channel.unary_unary(f"/{SERVICE}/Join")
        self._heartbeat = self._channel.unary_unary(f"/{SERVICE}/Heartbeat")
        self._pull = self._channel.unary_stream(f"/{SERVICE}/Pull")
        self._push = self._channel.stream_unary(f"/{SERVICE}/Push")
        self._stop = threading.Event()
        self._over_at: float | None = None  # when a heartbeat reply first said the job is over
        self._over_failed: str | None = None
        self.name = ""
        self.answered = 0
        self.notices: list[str] = []
        self.final: Arrays | None = None  # the job's final model, when the server sends it with "done"

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Call ``fn``, retrying while the server is unreachable, for at most give_up_after_s."""
        start = time.monotonic()
        delay = FIRST_RETRY_S
        retries = 0
        while True:
            try:
                result = fn()
            except grpc.RpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                    raise TransportError(f"server refused this site's identity: {exc.details()}") from None
                details = str(exc.details() or "")
                if code == grpc.StatusCode.UNAVAILABLE and _tls_failure(details):
                    raise TransportError(
                        f"{what}: the TLS handshake with the server failed, so retrying cannot help (is this kit from "
                        f"this federation? does the server's certificate match its address?): {details}"
                    ) from None
                if code not in _RETRYABLE:
                    raise TransportError(f"{what} failed: {code.name}: {details}") from None
                if time.monotonic() - start > self.give_up_after_s:
                    raise TransportError(
                        f"{what}: the server at {self.address} has been unreachable for {self.give_up_after_s:.0f} s "
                        f"(last: {code.name}: {one_line(details, 200)}); giving up. Is the server stopped or the "
                        "network down? Start this site again once it is back: it rejoins the job where it stands."
                    ) from None
                over_at = self._over_at
                if over_at is not None and time.monotonic() - over_at > self.after_done_s:
                    raise _ServerLeft(details) from None
                log.info("%s: server unreachable (%s), retrying in %.1f s", what, code.name, delay)
                time.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)
                retries += 1
                continue
            if retries:
                log.info(
                    "%s: reached the server again after %d retries (%.1f s)", what, retries, time.monotonic() - start
                )
            return result

    def _beat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                reply = self._heartbeat(b"{}", timeout=every_s)
            except grpc.RpcError as exc:
                log.debug("heartbeat failed: %s", exc.code().name)
                continue
            except ValueError:  # the channel closed under us: the site is shutting down
                return
            self._heard(reply)

    def _heard(self, reply: bytes) -> None:
        """A heartbeat reply: the server says whether the job is over (a site still training learns it here)."""
        try:
            said = json.loads(reply or b"{}")
        except ValueError:
            return
        if isinstance(said, dict) and said.get("done") and self._over_at is None:
            self._over_failed = one_line(said["failed"], 500) if said.get("failed") else None
            self._over_at = time.monotonic()
            log.info("site %s: the server says the job is over", self.name)

    def run(self) -> int:
        """Serve until the server says done; return the number of instructions answered."""
        hello = json.loads(self._call("join", lambda: self._join(b"{}", timeout=30)))
        self.name = str(hello["site"])
        log.info("site %s joined the server at %s", self.name, self.address)
        # heartbeats start before the site prepares its data: a site reading its cases is alive, and the server
        # must not drop it from the first round for the silence
        beat = threading.Thread(target=self._beat, args=(float(hello.get("heartbeat_s", 5.0)),), daemon=True)
        beat.start()
        try:
            try:
                endpoint = self.make_endpoint(hello["job"])
            except JobDeclined as declined:
                raise JobDeclined(f"{declined} ({self._decline(str(declined))})") from None
            return self._serve(endpoint)
        except _ServerLeft as exc:
            if self._over_failed is not None:
                raise JobFailed(f"the server ended the job as failed: {self._over_failed}") from None
            log.warning(
                "site %s: the server finished the job and has been unreachable for %.0f s since (%s); this site "
                "leaves without the final model (fetch it from the server's report folder)",
                self.name,
                self.after_done_s,
                one_line(str(exc), 200),
            )
            self.notices.append("the server finished the job but went away before this site collected the final model")
            return self.answered
        finally:
            self._stop.set()
            beat.join(timeout=5.0)
            self._channel.close()

    def _decline(self, reason: str) -> str:
        """Answer the server's next instruction with a refusal (at most ``decline_wait_s`` of waiting for one);
        return what became of it."""
        end = time.monotonic() + self.decline_wait_s
        while time.monotonic() < end:
            try:
                header, transfer = self._call("pull", self._fetch)
            except _ServerLeft:
                header, transfer = {"done": True}, None
            except ConfideError as exc:  # a broken transfer: pull it again
                log.warning("site %s: instruction transfer broken (%s); pulling it again", self.name, exc)
                continue
            if header.get("done"):
                return "the job ended before the server sent this site an instruction"
            if transfer is None or "task" not in header:
                continue
            try:
                rnd = serde.decode(transfer.payload).round
            except ConfideError:
                rnd = 0
            refusal = serde.encode(Failure(round=rnd, reason=f"site {self.name} {reason}", kind="refused"))
            del transfer
            self._deliver(str(header["task"]), refusal, leaving=True)
            log.info("site %s: told the server it declines, in round %d", self.name, rnd)
            return f"the server was told in round {rnd}"
        return f"the server sent no instruction within {self.decline_wait_s:.0f} s to decline; it was not told"

    def _serve(self, endpoint: Endpoint) -> int:
        """Pull, answer, push, until the server says done."""
        while True:
            try:
                header, transfer = self._call("pull", self._fetch)
            except ConfideError as exc:
                log.warning("site %s: instruction transfer broken (%s); pulling it again", self.name, exc)
                continue
            if header.get("done") and header.get("failed"):
                raise JobFailed(f"the server ended the job as failed: {one_line(header['failed'], 500)}")
            if header.get("done"):
                log.info("site %s: the server says the job is done", self.name)
                if transfer is not None:
                    self.final = serde.decode_arrays(bytes(transfer.payload))
                return self.answered
            if header.get("wait"):
                continue
            if "notice" in header:
                log.warning("site %s: the server says: %s", self.name, header["notice"])
                self.notices.append(str(header["notice"]))
                continue
            if transfer is None:
                continue
            log.info("site %s: instruction %s received (%d bytes)", self.name, header["task"], transfer.payload.nbytes)
            answer = _answer(endpoint, transfer.payload)
            del transfer  # the instruction's buffer is not needed while the answer streams
            self._deliver(str(header["task"]), answer)

    def _fetch(self) -> tuple[dict[str, Any], framing.Transfer | None]:
        """One long poll: a control message, or an instruction streamed into its own buffer."""
        stream = self._pull(b"{}", timeout=self.pull_timeout_s)
        try:
            first = next(stream)
        except StopIteration:
            return {"wait": True}, None
        header = framing.parse_header(first)
        if "task" not in header and not (header.get("done") and "size" in header):
            return header, None  # a control message (the final model, when the job is done, is a transfer)
        received = framing.receive_after(
            header, stream, max_bytes=DEFAULT_MAX_BYTES, allocate=framing.new_buffer, first=first
        )
        return header, received

    def _deliver(self, task_id: str, answer: bytes | Encoded, *, leaving: bool = False) -> None:
        """Push ``answer`` to ``task_id``; ``leaving``: this site's last word in this job (it declines the job),
        so the server stops counting it among the connected sites at once instead of waiting out its silence."""
        header: dict[str, Any] = {"task": task_id, **({"leaving": True} if leaving else {})}
        for attempt in range(1, self.push_attempts + 1):
            reply = json.loads(self._call("push", lambda: self._push(framing.message(answer, **header), timeout=600)))
            if reply.get("ok"):
                self.answered += 1
                return
            if reply.get("done"):  # the job ended while this site worked: the next pull collects the final model
                log.info("site %s: the job ended before this answer arrived; collecting the final model", self.name)
                return
            log.warning("site %s: server did not take the answer (%s), attempt %d", self.name, reply, attempt)
            if not reply.get("retry"):
                return
        log.error("site %s: answer to %s could not be delivered after %d attempts", self.name, task_id, attempt)


class _ServerLeft(Exception):
    """The server said the job is over, then stayed unreachable for ``after_done_s``."""


# A handshake refused over a certificate (an unknown CA, a name that does not match, the server's alert about this
# site's certificate) fails again however often it is tried. A handshake cut short by the network (a reset, a
# closed socket, a partition) is like any broken connection: tried again.
_TLS_MARKS = ("ssl_error", "certificate", "alert", "tsi_protocol_failure", "peer name")
_CUT_SHORT = (
    "socket closed",
    "endpoint closing",
    "connection reset",
    "broken pipe",
    "handshake read failed",
    "handshake write failed",
)


def _tls_failure(details: str) -> bool:
    """Whether gRPC's reason for an unavailable server is a TLS handshake refused over a certificate (a wrong CA,
    a certificate that does not match), which no retry cures, rather than a server that is down or unreachable or a
    handshake the network cut short."""
    lowered = details.lower()
    if any(mark in lowered for mark in _CUT_SHORT):
        return False
    return any(mark in lowered for mark in _TLS_MARKS)


def _answer(endpoint: Endpoint, payload: memoryview) -> bytes | Encoded:
    """The endpoint's answer, unjoined when it can give one (no copy of the update before it streams)."""
    encoded = getattr(endpoint, "handle_encoded", None)
    if callable(encoded):
        result = encoded(payload)
        if isinstance(result, Encoded):
            return result
    return endpoint.handle(payload)
