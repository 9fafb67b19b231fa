"""The dashboard in a real browser (Debian's headless Chromium) against a live job: a small table federation in
the simulator, whose rounds the test lets start one at a time, so that it can watch the page follow them."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from confide.dashboard.follow import Followed, SiteContacts
from confide.dashboard.live import Dashboard
from confide.experiment import JobResult, run_job
from confide.privacy.ledger import Ledger
from confide.records import Arrays
from confide.report.progress import ProgressDisplay
from confide.server.events import Fanout
from confide.server.loop import RoundResult
from confide.transport.base import Transport
from tests.dashboard.support import HOSTILE, TOKEN, request, table_csv, table_job

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_S = 90  # a shared two-core machine: chromium, the job and the test share it

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
    reason=f"headless Chromium needs chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}): apt install chromium "
    "chromium-driver",
)


class _Gate:
    """Round events that hold each round at its start until the test lets it go."""

    def __init__(self) -> None:
        self.go = threading.Semaphore(0)

    def round_started(self, round: int, sites: list[str]) -> None:
        self.go.acquire(timeout=600)

    def site_finished(self, round: int, site: str, ok: bool, detail: str) -> None:
        pass

    def round_finished(self, result: RoundResult, global_arrays: Arrays) -> None:
        pass


class _Gated:
    """The dashboard as the simulator's watcher, its round events followed by the gate (the page sees a round
    start, then waits with it)."""

    def __init__(self, dashboard: Dashboard, gate: _Gate) -> None:
        self.dashboard, self.gate = dashboard, gate

    def follow(
        self,
        transport: Transport,
        contacts: SiteContacts | None = None,
        ledgers: Mapping[str, Ledger] | None = None,
    ) -> Followed:
        followed = self.dashboard.follow(transport, contacts, ledgers)
        return Followed(followed.transport, Fanout(followed.events, self.gate))

    def scored(self, round: int, metrics: Mapping[str, float]) -> None:
        self.dashboard.scored(round, metrics)


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-proxy-server"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver: Any, selector: str) -> str:
    return str(
        driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", selector)
    )


def _count(driver: Any, selector: str) -> int:
    return int(driver.execute_script("return document.querySelectorAll(arguments[0]).length", selector))


def _wait(driver: Any, what: str, condition: Any) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(
        lambda d: condition(d), message=f"the page never showed {what}"
    )


def test_the_page_follows_a_live_job_in_headless_chromium(tmp_path: Path, browser: Any) -> None:
    job = table_job(table_csv(tmp_path / "t.csv"), tmp_path / "run", rounds=3, min_sites=3)
    gate = _Gate()
    outcome: dict[str, JobResult | BaseException] = {}

    def run(watch: _Gated) -> None:
        try:
            outcome["result"] = run_job(job, ProgressDisplay(enabled=False), watch)
        except BaseException as exc:
            outcome["error"] = exc

    with Dashboard(job, mode="simulation", token=TOKEN) as dashboard:
        worker = threading.Thread(target=run, args=(_Gated(dashboard, gate),), daemon=True)
        worker.start()
        try:
            browser.get(f"{dashboard.url}?token={TOKEN}")

            # round 1 starts and waits: three sites, connected, one running round, no curve yet
            _wait(browser, "the three sites", lambda d: _count(d, "#sites tbody tr") == 3)
            _wait(browser, "round 1 running", lambda d: "round 1 of 3 running" in _text(d, "#status"))
            assert _text(browser, "#round-count") == "0" and _count(browser, "#rounds tbody tr.running") == 1
            names = browser.execute_script(
                "return [...document.querySelectorAll('#sites tbody td.site')].map(td => td.textContent)"
            )
            assert sorted(names) == sorted(["north", "south", HOSTILE])  # shown as text, never as markup
            assert _count(browser, "#sites img") == 0 and browser.execute_script("return window.__pwned") is None

            gate.go.release()  # round 1 runs and closes; round 2 starts and waits
            _wait(browser, "one round closed", lambda d: _text(d, "#round-count") == "1")
            _wait(
                browser, "the learning curve", lambda d: _count(d, "#curves .js-plotly-plot .scatterlayer .trace") >= 1
            )
            assert _count(browser, "#rounds tbody tr.closed") == 1
            assert "training loss" in _text(browser, "#curves")

            gate.go.release()  # round 2
            _wait(browser, "two rounds closed", lambda d: _text(d, "#round-count") == "2")

            gate.go.release()  # round 3, the last
            _wait(browser, "the job done", lambda d: "done" in _text(d, "#status"))
            worker.join(WAIT_S)
            assert "error" not in outcome, outcome.get("error")
            assert _text(browser, "#round-count") == "3" and _count(browser, "#rounds tbody tr.closed") == 3
            assert '"name": "dashboard-test"' in _text(browser, "#job")
            # the simulator scored each round's model on the sites' test splits: a curve and a note in each row
            assert "test auc (mean over the sites' test splits)" in _text(browser, "#curves")
            assert _text(browser, "#rounds tbody tr.closed").count("test splits: ") == 1
            assert "no site keeps a ledger" in _text(browser, "#privacy-note")
            severe = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
            assert severe == []  # no script error, nothing the page's content policy blocked
        finally:
            gate.go.release(10)  # whatever failed, the job is not left waiting

        browser.get(f"{dashboard.url}?token=not-the-token-at-all")
        refused_page = browser.find_element("tag name", "body").text
        refused = request(f"{dashboard.url}?token=not-the-token-at-all", token=None)[0]
        missing = request(dashboard.url, token=None)[0]

    assert "a valid dashboard token is needed" in refused_page and (refused, missing) == (401, 401)
