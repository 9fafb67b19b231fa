"""The dashboard's web application (Starlette): read-only, every path behind a token.

- ``/``: the page (``static/index.html``; its script and styles under ``/static/``);
- ``/api/state``: the federation now, as JSON (:class:`~confide.dashboard.snapshot.Snapshot`);
- ``/api/events``: server-sent events, the new snapshot whenever it changes, a keep-alive comment meanwhile, and
  an ``end`` event when the dashboard stops (the process ends);
- ``/static/plotly.js``: plotly.js from the installed plotly package (nothing is fetched from the internet).

Only GET (and HEAD) is answered; anything else gets 405. The token comes as ``Authorization: Bearer TOKEN``, as
``?token=TOKEN`` (the browser's first visit, and its event stream) or, for the page's own script and styles, the
cookie the page's answer sets (HttpOnly, SameSite=Strict; named after a hash of the token, since a browser keeps
one cookie jar per host whatever the port, so two dashboards on one host keep theirs apart); a missing or wrong one
gets 401. Tokens are compared in
constant time. Every answer forbids framing, sniffing and referrers (the token may be in the address), and the
page may run only the scripts served here.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import threading
from collections.abc import AsyncIterator, Hashable
from http.cookies import SimpleCookie
from importlib import resources
from typing import Protocol
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE_PREFIX = "confide_dashboard_"


def cookie_name(token: str) -> str:
    """The cookie of the dashboard guarded by ``token``: 12 hex digits of its hash tell it from another
    dashboard's on the same host, and say nothing usable of the token."""
    return COOKIE_PREFIX + hashlib.sha256(token.encode()).hexdigest()[:12]


PAGE_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        b"connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class Publisher(Protocol):
    """What the app shows: a key that changes whenever the snapshot would, and the snapshot as JSON."""

    def change_key(self) -> Hashable: ...

    def snapshot_json(self) -> bytes: ...


def token_of(scope: Scope, cookie_name: str) -> str | None:
    """The token a request presents: its bearer header, else its ``token`` query parameter, else the cookie
    called ``cookie_name``."""
    headers = dict(scope.get("headers") or [])
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][-1]
    cookie = headers.get(b"cookie")
    if cookie:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(cookie.decode("latin-1"))
        except Exception:  # a malformed cookie header presents no token
            return None
        if cookie_name in jar:
            return jar[cookie_name].value
    return None


class TokenGate:
    """Every HTTP request must present the token; every answer carries the security headers."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()
        self.cookie = cookie_name(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        given = token_of(scope, self.cookie)
        if given is None or not hmac.compare_digest(given.encode(), self.token):
            answer = Response(
                "a valid dashboard token is needed (Authorization: Bearer TOKEN, or ?token=TOKEN)\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="confide dashboard"'},
                media_type="text/plain",
            )
            await answer(scope, receive, secured)
            return
        await self.app(scope, receive, secured)


@functools.lru_cache(maxsize=4)
def static_file(name: str) -> bytes:
    return (resources.files("confide.dashboard") / "static" / name).read_bytes()


@functools.lru_cache(maxsize=1)
def plotly_js() -> bytes:
    import plotly.offline

    return plotly.offline.get_plotlyjs().encode()


def make_app(
    publisher: Publisher,
    token: str,
    stopping: threading.Event,
    *,
    poll_s: float = 0.25,
    keepalive_s: float = 15.0,
) -> ASGIApp:
    """The dashboard's application. ``stopping``: set when the server shuts down, which ends every event stream."""
    if len(token) < 16:
        raise ValueError("the dashboard token must be at least 16 characters")
    cookie = cookie_name(token)

    async def page(request: Request) -> Response:
        answer = Response(static_file("index.html"), media_type="text/html")
        given = token_of(request.scope, cookie)
        if given is not None:  # the page's own script and styles then need no token in their addresses
            answer.set_cookie(cookie, given, httponly=True, samesite="strict", path="/")
        return answer

    async def page_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "plotly.js":
            body = await asyncio.to_thread(plotly_js)  # read once, off the event loop
            return Response(body, media_type="text/javascript")
        if name not in PAGE_FILES:
            return Response("not found\n", status_code=404, media_type="text/plain")
        return Response(static_file(name), media_type=PAGE_FILES[name])

    async def state(request: Request) -> Response:
        return Response(publisher.snapshot_json(), media_type="application/json")

    async def stream() -> AsyncIterator[bytes]:
        last: Hashable = object()
        quiet = 0.0
        yield b"retry: 2000\n\n"
        while not stopping.is_set():
            key = publisher.change_key()
            if key != last:
                last, quiet = key, 0.0
                yield b"data: " + publisher.snapshot_json() + b"\n\n"
            elif quiet >= keepalive_s:
                quiet = 0.0
                yield b": keep-alive\n\n"
            await asyncio.sleep(poll_s)
            quiet += poll_s
        # the process is ending (a simulation done, a server stopped): the page keeps its last state, says so and
        # stops reconnecting
        yield b"event: end\ndata: {}\n\n"

    async def events(request: Request) -> Response:
        return StreamingResponse(stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/api/state", state, methods=["GET"]),
        Route("/api/events", events, methods=["GET"]),
        Route("/static/{name}", page_file, methods=["GET"]),
    ]
    return TokenGate(Starlette(routes=routes), token)
