"""Serving a :class:`~confide.transport.grpc_server.FederationService`: its gRPC aio server, with mutual TLS, on an
event loop in a thread of its own, started and stopped from ordinary threads."""

from __future__ import annotations

import asyncio
import queue
import threading

import grpc

from confide.errors import ConfideError
from confide.transport.grpc_server import SERVER_OPTIONS, SERVICE, FederationService

__all__ = ["RunningServer", "start_server"]


class RunningServer:
    """A started service: its gRPC server on an event loop in a thread of its own. ``stop(grace)`` ends both and
    returns an event set once they have ended (as grpc.Server's does)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server: grpc.aio.Server, thread: threading.Thread) -> None:
        self._loop = loop
        self._server = server
        self._thread = thread
        self._stopped = threading.Event()
        self._stopping = False
        self._guard = threading.Lock()

    def stop(self, grace: float | None) -> threading.Event:
        with self._guard:
            if self._stopping:
                return self._stopped
            self._stopping = True

        async def stop() -> None:
            await self._server.stop(grace)

        def finished(_: object) -> None:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._loop.stop)

        try:
            asyncio.run_coroutine_threadsafe(stop(), self._loop).add_done_callback(finished)
        except RuntimeError:  # the loop has ended already
            self._stopped.set()
        threading.Thread(target=self._wait_ended, name="confide-grpc-stop", daemon=True).start()
        return self._stopped

    def _wait_ended(self) -> None:
        self._thread.join()
        self._stopped.set()


def start_server(
    service: FederationService, *, port: int, key_pem: bytes, cert_pem: bytes, host: str = "[::]"
) -> tuple[RunningServer, int]:
    """Start serving on ``host:port`` with mutual TLS (client certificates required), on an event loop in a
    thread of its own."""
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    loop = asyncio.new_event_loop()
    started: queue.Queue[tuple[grpc.aio.Server, int] | BaseException] = queue.Queue()

    async def begin() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        # Every method takes a request stream, so that its handler runs (and checks the caller) before any request
        # is read; the sites' unary calls are the same on the wire.
        handlers = {
            "Join": grpc.stream_unary_rpc_method_handler(service.join),
            "Heartbeat": grpc.stream_unary_rpc_method_handler(service.heartbeat),
            "Pull": grpc.stream_stream_rpc_method_handler(service.pull),
            "Push": grpc.stream_unary_rpc_method_handler(service.push),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        credentials = grpc.ssl_server_credentials(
            [(key_pem, cert_pem)], root_certificates=service.ca_pem, require_client_auth=True
        )
        try:
            bound = server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # grpcio raises where older versions returned 0
            raise ConfideError(f"cannot listen on {address}: {exc} (is another server using the port?)") from None
        if bound == 0:
            raise ConfideError(f"cannot listen on {address} (port in use, or an address this machine does not have)")
        await server.start()
        return server, bound

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started.put(loop.run_until_complete(begin()))
        except BaseException as exc:
            started.put(exc)
            loop.close()
            return
        try:
            loop.run_forever()
        finally:
            service._loop = None
            loop.close()

    service._loop = loop
    thread = threading.Thread(target=run, name="confide-grpc", daemon=True)
    thread.start()
    outcome = started.get()
    if isinstance(outcome, BaseException):
        service._loop = None
        thread.join()
        raise outcome
    server, bound = outcome
    return RunningServer(loop, server, thread), bound
