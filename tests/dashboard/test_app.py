"""The dashboard's web application, served for real on 127.0.0.1: the token, read-only methods, the JSON, the
event stream, plotly.js from the installed package, and a page that never parses a name as markup."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from confide.dashboard.app import cookie_name
from confide.dashboard.live import Dashboard
from confide.dashboard.snapshot import Snapshot
from confide.errors import ConfigError
from confide.records import Arrays
from confide.server.loop import RoundResult
from tests.dashboard.support import HOSTILE, TOKEN, open_stream, request, state, table_job

PATHS = ["/", "/api/state", "/api/events", "/static/plotly.js", "/static/dashboard.js", "/nowhere"]


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    job = table_job(tmp_path / "t.csv", tmp_path / "run")
    with Dashboard(job, mode="simulation", token=TOKEN, poll_s=0.05, keepalive_s=0.3) as live:
        yield live


def _data_events(
    stream: Any, until: Callable[[dict[str, Any]], bool] = lambda _: True, limit_s: float = 60.0
) -> tuple[list[dict[str, Any]], list[str]]:
    """The snapshots the stream sends up to the first that ``until`` accepts, and its comment lines meanwhile."""
    events: list[dict[str, Any]] = []
    comments: list[str] = []
    end = time.monotonic() + limit_s
    while not (events and until(events[-1])) and time.monotonic() < end:
        line = stream.readline().decode().rstrip("\n")
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
        elif line.startswith(":"):
            comments.append(line)
    return events, comments


@pytest.mark.parametrize("path", PATHS)
def test_every_path_needs_the_token(dashboard: Dashboard, path: str) -> None:
    url = dashboard.url.rstrip("/") + path

    missing = request(url, token=None)[0]
    wrong_bearer = request(url, token="not-the-token-at-all")[0]
    wrong_query = request(url + "?token=not-the-token-at-all", token=None)[0]
    own_cookie = cookie_name(TOKEN)  # its name, with another value
    wrong_cookie = request(url, token=None, headers={"Cookie": f"{own_cookie}=not-the-token-at-all"})[0]

    assert (missing, wrong_bearer, wrong_query, wrong_cookie) == (401, 401, 401, 401)


def test_a_wrong_token_is_told_how_to_give_one(dashboard: Dashboard) -> None:
    status, headers, body = request(dashboard.url + "api/state", token="not-the-token-at-all")

    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert b"token" in body and TOKEN.encode() not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_it_is_read_only(dashboard: Dashboard, method: str) -> None:
    with_token = request(dashboard.url + "api/state", method=method)[0]
    without = request(dashboard.url + "api/state", method=method, token=None)[0]

    assert (with_token, without) == (405, 401)


def test_the_state_is_a_snapshot_in_json_and_a_hostile_name_stays_a_string(dashboard: Dashboard) -> None:
    dashboard.state.round_started(1, ["north", HOSTILE])
    dashboard.state.site_finished(1, HOSTILE, False, f"site {HOSTILE} refused: budget spent")

    status, headers, body = request(dashboard.url + "api/state")

    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff" and "script-src 'self'" in headers["content-security-policy"]
    snap = Snapshot.model_validate_json(body)
    assert {s.name for s in snap.sites} == {"north", HOSTILE}
    assert snap.job["name"] == "dashboard-test" and snap.rounds_planned == 3 and snap.current_round == 1
    assert set(json.loads(body)) == set(Snapshot.model_fields)


def test_the_event_stream_sends_a_new_snapshot_after_an_event(dashboard: Dashboard) -> None:
    with open_stream(dashboard.url) as stream:
        first, _ = _data_events(stream)
        dashboard.state.round_started(1, ["north", "south"])
        dashboard.state.round_finished(
            RoundResult(1, ("north", "south"), {}, {"loss": 0.4}, {}, 1.0, 0.5), Arrays.from_dict({})
        )
        later, _ = _data_events(stream, lambda snap: snap["rounds_closed"] == 1)

    assert first[0]["rounds_closed"] == 0
    assert later and later[-1]["rounds_closed"] == 1 and later[-1]["curves"][0]["values"] == [0.4]


def test_a_quiet_event_stream_sends_keep_alive_comments(dashboard: Dashboard) -> None:
    with open_stream(dashboard.url) as stream:
        stream.readline()  # the reconnection delay
        _, comments = _data_events(stream)
        end = time.monotonic() + 60
        while ": keep-alive" not in comments and time.monotonic() < end:
            comments.append(stream.readline().decode().rstrip("\n"))

    assert ": keep-alive" in comments


def test_plotly_js_is_served_from_the_installed_package(dashboard: Dashboard) -> None:
    import plotly.offline

    status, headers, body = request(dashboard.url + "static/plotly.js")

    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert body == plotly.offline.get_plotlyjs().encode()


def test_the_page_sets_a_strict_cookie_with_which_its_own_files_load(dashboard: Dashboard) -> None:
    status, headers, body = request(dashboard.url + f"?token={TOKEN}", token=None)
    cookie = headers["set-cookie"]

    script = request(dashboard.url + "static/dashboard.js", token=None, headers={"Cookie": cookie.split(";")[0]})

    assert status == 200 and b'id="sites"' in body and b'id="rounds"' in body and b'id="curves"' in body
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert script[0] == 200 and b"EventSource" in script[2]


def test_two_dashboards_on_one_host_keep_their_cookies_apart(tmp_path: Path, dashboard: Dashboard) -> None:
    """A browser keeps one cookie jar per host, whatever the port: with one cookie name, opening a second
    dashboard replaced the first's cookie, and the first page's files then answered 401."""
    other_token = "another-dashboard-token-0123456789"
    job = table_job(tmp_path / "t.csv", tmp_path / "run2")
    with Dashboard(job, mode="simulation", token=other_token) as other:
        first = request(dashboard.url + f"?token={TOKEN}", token=None)[1]["set-cookie"].split(";")[0]
        second = request(other.url + f"?token={other_token}", token=None)[1]["set-cookie"].split(";")[0]
        jar = f"{first}; {second}"  # what the browser sends to either port of 127.0.0.1

        answers = [
            request(url + "static/dashboard.js", token=None, headers={"Cookie": jar})[0]
            for url in (dashboard.url, other.url)
        ]

    assert first.split("=")[0] != second.split("=")[0] and TOKEN[:8] not in first.split("=")[0]
    assert answers == [200, 200]


def test_the_page_never_parses_what_it_shows_as_markup() -> None:
    static = resources.files("confide.dashboard") / "static"
    script = (static / "dashboard.js").read_text()
    page = (static / "index.html").read_text()

    sinks = re.findall(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function", script)
    inline = re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page)
    assert sinks == [] and inline == []
    assert "textContent" in script and "plotText(" in script  # text nodes; names given to plotly escaped


def test_closing_the_dashboard_ends_its_streams_and_frees_its_port(tmp_path: Path) -> None:
    job = table_job(tmp_path / "t.csv", tmp_path / "run")
    live = Dashboard(job, mode="deployment", token=TOKEN, poll_s=0.05).start()
    stream = open_stream(live.url)
    _data_events(stream)

    started = time.monotonic()
    live.close()
    rest = stream.read()  # returns once the server has closed the stream

    assert time.monotonic() - started < 30 and rest.endswith(b"event: end\ndata: {}\n\n")  # the page stops there
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", live.port)) != 0


def test_a_port_taken_is_a_clear_error(dashboard: Dashboard, tmp_path: Path) -> None:
    job = table_job(tmp_path / "t.csv", tmp_path / "run")

    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{dashboard.port}"):
        Dashboard(job, mode="simulation", token=TOKEN, port=dashboard.port)


def test_a_short_token_is_refused(tmp_path: Path) -> None:
    job = table_job(tmp_path / "t.csv", tmp_path / "run")

    with pytest.raises(ValueError, match="at least 16"):
        Dashboard(job, mode="simulation", token="short")


def test_the_state_changes_only_when_something_happened(dashboard: Dashboard) -> None:
    before = state(dashboard.url)["version"]
    again = state(dashboard.url)["version"]

    dashboard.state.round_started(1, ["north"])

    assert before == again < state(dashboard.url)["version"]


def test_a_transport_that_fails_to_answer_leaves_the_page_working(dashboard: Dashboard) -> None:
    class Closing:
        concurrent = False

        def sites(self) -> list[str]:
            raise RuntimeError("dictionary changed size during iteration")

    dashboard.follow(Closing())  # type: ignore[arg-type]
    dashboard.state.round_started(1, ["north"])

    snap = Snapshot.model_validate(state(dashboard.url))

    assert [(s.name, s.connected) for s in snap.sites] == [("north", False)] and snap.current_round == 1
