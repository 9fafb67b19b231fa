"""A federation service on 127.0.0.1 with real mutual TLS, honest sites (the real SiteClient) and a hand-written
hostile client that holds one valid site certificate and does what no honest site does: stalls, trickles, floods.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from confide.provision import parse_federation, provision
from confide.serde import new_digest
from confide.transport import framing
from confide.transport.grpc_client import SiteClient
from confide.transport.grpc_server import GRPC_OPTIONS, SERVICE, FederationService, ServiceConfig
from confide.transport.grpc_serving import start_server

SITES = ["site-1", "site-2", "site-3"]
LONG = 120.0  # the most any condition may take on a loaded machine; reached only when the test is failing


def provision_kits(out: Path) -> Path:
    spec = parse_federation({"name": "fed", "server": {"host": "127.0.0.1", "port": 8443}, "sites": SITES})
    provision(spec, out)
    return out


def wait_until(condition: Callable[[], bool], timeout_s: float = LONG, every_s: float = 0.05) -> bool:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(every_s)
    return True


@dataclass
class Federation:
    kits: Path
    service: FederationService
    server: grpc.Server
    port: int
    threads: list[threading.Thread] = field(default_factory=list)
    clients: list[SiteClient] = field(default_factory=list)

    def stop(self) -> None:
        self.server.stop(0).wait(10)

    def honest(self, name: str, answer: Callable[[memoryview], bytes], **settings: Any) -> SiteClient:
        """The real site client, in a thread, answering every instruction with ``answer(instruction)``;
        ``settings``: SiteClient's own (give_up_after_s, after_done_s ...)."""
        kit = self.kits / "sites" / name
        client = SiteClient(
            f"localhost:{self.port}",
            key_pem=(kit / "site.key").read_bytes(),
            cert_pem=(kit / "site.crt").read_bytes(),
            ca_pem=(kit / "ca.crt").read_bytes(),
            make_endpoint=lambda _job: _Endpoint(answer),
            **({"give_up_after_s": LONG} | settings),
        )
        thread = threading.Thread(target=client.run, daemon=True)
        thread.start()
        self.threads.append(thread)
        self.clients.append(client)
        return client

    def hostile(self, name: str) -> Hostile:
        return Hostile(self.kits / "sites" / name, self.port)


class _Endpoint:
    def __init__(self, answer: Callable[[memoryview], bytes]) -> None:
        self.answer = answer

    def handle(self, payload: memoryview) -> bytes:
        return self.answer(payload)


def serve(kits: Path, **settings: Any) -> Federation:
    server_kit = kits / "server"
    service = FederationService((server_kit / "ca.crt").read_bytes(), ServiceConfig(job={}, **settings))
    server, port = start_server(
        service,
        port=0,
        host="127.0.0.1",
        key_pem=(server_kit / "server.key").read_bytes(),
        cert_pem=(server_kit / "server.crt").read_bytes(),
    )
    return Federation(kits=kits, service=service, server=server, port=port)


class Gate:
    """A request stream that sends ``frames`` and then hangs, holding the call open, until ``release()``."""

    def __init__(self, frames: list[bytes] | Iterator[bytes] = ()) -> None:
        self.frames = frames
        self.released = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        yield from self.frames
        self.released.wait(LONG * 2)

    def release(self) -> None:
        self.released.set()


class Hostile:
    """A hand-written client with a valid site certificate."""

    def __init__(self, kit: Path, port: int) -> None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(kit / "ca.crt").read_bytes(),
            private_key=(kit / "site.key").read_bytes(),
            certificate_chain=(kit / "site.crt").read_bytes(),
        )
        self.channel = grpc.secure_channel(f"localhost:{port}", credentials, options=GRPC_OPTIONS)
        self.join = self.channel.unary_unary(f"/{SERVICE}/Join")
        self.heartbeat = self.channel.unary_unary(f"/{SERVICE}/Heartbeat")
        self.pull = self.channel.unary_stream(f"/{SERVICE}/Pull")
        self.push = self.channel.stream_unary(f"/{SERVICE}/Push")
        # a unary call whose request message never comes (sent as a stream that never sends it)
        self.heartbeat_stream = self.channel.stream_unary(f"/{SERVICE}/Heartbeat")
        self.gates: list[Gate] = []

    def task_id(self) -> str:
        """Long-poll until the server hands this site an instruction; its task id (the rest is not read)."""
        deadline = time.monotonic() + LONG
        while time.monotonic() < deadline:
            stream = self.pull(b"{}", timeout=LONG)
            header = framing.parse_header(next(stream))
            stream.cancel()
            if "task" in header:
                return str(header["task"])
        raise AssertionError("the server never sent this site an instruction")

    def stalled_push(self, frames: list[bytes]) -> grpc.Future:
        """A push that sends ``frames`` and then nothing more, holding its stream open."""
        gate = Gate(frames)
        self.gates.append(gate)
        return self.push.future(iter(gate))

    def stalled_heartbeat(self) -> grpc.Future:
        """A heartbeat whose request message never comes (the call stays open)."""
        gate = Gate()
        self.gates.append(gate)
        return self.heartbeat_stream.future(iter(gate))

    def close(self) -> None:
        for gate in self.gates:
            gate.release()
        self.channel.close()


def transfer(
    task: str, size: int, *, send: int | None = None, every_s: float = 0.0, chunk: int = 1 << 18
) -> Iterator[bytes]:
    """A push announcing ``size`` bytes for ``task`` that sends ``send`` of them (default: all, then the right
    digest), in chunks of ``chunk`` bytes, ``every_s`` seconds apart; the bytes come from one reused block."""
    block = bytes(range(256)) * (chunk // 256 + 1)
    yield framing.HEADER + json.dumps({"task": task, "size": size}).encode()
    hasher = new_digest()
    left = size if send is None else send
    while left > 0:
        part = block[: min(chunk, left)]
        hasher.update(part)
        yield framing.DATA + part
        left -= len(part)
        if every_s:
            time.sleep(every_s)
    yield framing.TRAILER + hasher.hexdigest().encode()
