"""The Ray engine's transport: simulated sites hosted by a pool of Ray actors, many sites to an actor.

Each site lives on one host for the whole job (its state stays there); a host answers ``handle(site, payload)``
with the site's encoded answer and the seconds it took, and ``notice(site, message)``. Messages travel as serde
bytes, as over the in-memory transport: each distinct instruction is put in Ray's object store once per exchange
and every host reads it from there.

Replies are yielded in the order of the messages, not as they finish, so that a strategy folds the updates in the
same order on every run and on either engine (a job without privacy is reproducible bit for bit). Hosts still
work at once: each runs up to ``window`` of its sites ahead of the server, so at most ``window`` answers per host
wait to be drawn and memory stays bounded whatever the number of sites. Sites on one host take turns, so a round's
deadline applies to each site's own time, as the in-memory transport does. A host whose process dies takes its
sites with it: their replies say why and they are no longer connected.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from confide.serde import Encoded
from confide.transport.base import Reply


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class RayTransport:
    concurrent = True  # hosts work at once (a host's own sites take turns)

    def __init__(self, hosts: Sequence[Any], placement: Mapping[str, int], *, window: int = 2) -> None:
        """``hosts``: Ray actor handles (:class:`~confide.sim_ray_host.SiteHost`); ``placement``: each site's host,
        by index into ``hosts``, in the order sites are listed."""
        import ray

        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        bad = sorted({h for h in placement.values() if not 0 <= h < len(hosts)})
        if bad:
            raise ValueError(f"placement names hosts {bad[:5]}, there are {len(hosts)}")
        self._ray = ray
        self._hosts = list(hosts)
        self._placement = dict(placement)
        self._stopped: dict[int, str] = {}  # host -> why it stopped
        self.window = window

    def sites(self) -> list[str]:
        return [site for site, host in self._placement.items() if host not in self._stopped]

    def exchange(self, messages: Mapping[str, bytes | Encoded], deadline_s: float | None = None) -> Iterator[Reply]:
        order = list(messages)
        ready: dict[int, Reply] = {}  # replies known before any call: sites not connected
        queues: dict[int, deque[int]] = {}
        for index, site in enumerate(order):
            host = self._placement.get(site)
            if host is None:
                ready[index] = Reply(site=site, payload=None, error="site is not connected")
            elif host in self._stopped:
                ready[index] = Reply(site=site, payload=None, error=f"site is not connected: {self._stopped[host]}")
            else:
                queues.setdefault(host, deque()).append(index)
        objects: dict[int, Any] = {}  # id(message) -> its bytes in the object store, put once
        calls: dict[int, Any] = {}  # message index -> the pending call
        running = dict.fromkeys(queues, 0)

        def submit(host: int) -> None:
            queue = queues[host]
            while queue and running[host] < self.window:
                index = queue.popleft()
                message = messages[order[index]]
                stored = objects.get(id(message))
                if stored is None:
                    data = message if isinstance(message, bytes) else message.tobytes()
                    stored = objects[id(message)] = self._ray.put(data)
                calls[index] = self._hosts[host].handle.remote(order[index], stored)
                running[host] += 1

        for host in queues:
            submit(host)
        try:
            for index, site in enumerate(order):
                reply = ready.pop(index, None)
                if reply is None:
                    host = self._placement[site]
                    reply = self._collect(site, host, calls.pop(index), deadline_s)
                    running[host] -= 1
                    submit(host)
                yield reply
        finally:  # the server stopped drawing (or the exchange is over): sites not yet started never start
            for call in calls.values():
                with contextlib.suppress(Exception):  # already running or done: its answer is dropped
                    self._ray.cancel(call)

    def _collect(self, site: str, host: int, call: Any, deadline_s: float | None) -> Reply:
        ray = self._ray
        try:
            answer, seconds = ray.get(call)
        except ray.exceptions.RayActorError as exc:
            why = f"its host (Ray actor {host}) stopped: {_first_line(exc)}"
            self._stopped.setdefault(host, why)
            return Reply(site=site, payload=None, error=f"site is not connected: {why}")
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            return Reply(site=site, payload=None, error=f"site crashed: {type(cause).__name__}: {_first_line(cause)}")
        except ray.exceptions.TaskCancelledError:
            return Reply(site=site, payload=None, error="site's call was cancelled")
        if not isinstance(answer, bytes) or not isinstance(seconds, float):
            return Reply(site=site, payload=None, error=f"site's host answered a {type(answer).__name__}, not bytes")
        if deadline_s is not None and seconds > deadline_s:
            return Reply(site=site, payload=None, error=f"round deadline of {deadline_s:g} s passed")
        return Reply(site=site, payload=answer, seconds=seconds)

    def notify(self, site: str, message: str) -> None:
        host = self._placement.get(site)
        if host is not None and host not in self._stopped:
            self._hosts[host].notice.remote(site, message)  # nothing waits for it

    def close(self) -> None:
        self._hosts.clear()
        self._placement.clear()
