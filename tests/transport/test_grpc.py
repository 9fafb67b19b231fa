"""A federation over real gRPC with mutual TLS on 127.0.0.1, server and sites in threads of this process."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from confide import serde
from confide.config import JobConfig, parse_job
from confide.deploy import serve
from confide.deploy_site import private_runner, run_site
from confide.errors import TransportError
from confide.privacy.config import PrivacyConfig
from confide.provision import parse_federation, provision, revoke_site
from confide.records import Arrays, Config, TrainRes
from confide.server.loop import LoopConfig
from confide.server.sampling import sample_sites
from confide.sim import simulate
from confide.site.runner import SiteRunner
from confide.strategies import FedAvg
from tests.helpers import QuadraticTask, arrays, serve_in_thread
from tests.transport.hostile import LONG, wait_until

TARGETS = {"site-1": arrays(w=[2.0, 0.0]), "site-2": arrays(w=[0.0, 2.0]), "site-3": arrays(w=[1.0, 4.0])}
SITES = list(TARGETS)


def simulated(rounds: int) -> Arrays:
    """The model the simulator reaches with the three sites' quadratic tasks: what a deployment must reach too."""
    return simulate(
        FedAvg({"local_steps": 1, "lr": 0.5}),
        {n: QuadraticTask(t, examples=10) for n, t in TARGETS.items()},
        arrays(w=[0.0, 0.0]),
        LoopConfig(rounds=rounds),
    ).arrays


def _federation(out: Path, name: str = "fed") -> Path:
    spec = parse_federation({"name": name, "server": {"host": "127.0.0.1", "port": 8443}, "sites": SITES})
    provision(spec, out)
    return out


def _job(tmp_path: Path, rounds: int = 3) -> JobConfig:
    return parse_job(
        {
            "data": {"root": str(tmp_path)},
            "task": {"lr": 0.5},
            "federation": {"rounds": rounds, "local_steps": 1, "min_sites": 3},
            "report": {"out": str(tmp_path / "report")},
        }
    )


def _runner(name: str, job: JobConfig) -> SiteRunner:
    return SiteRunner(name, QuadraticTask(TARGETS[name], examples=10))


def _deployed(
    kits: Path, job: JobConfig, tmp_path: Path
) -> tuple[dict[str, object], list[dict[str, Any]], dict[str, object]]:
    """The job served to every site until it ends; the server's result, its rounds.json and each site's answer."""
    server, result = serve_in_thread(kits / "server", job)
    answers: dict[str, object] = {}
    threads = [_site(kits, name, int(result["port"]), answers) for name in SITES]  # type: ignore[call-overload]
    server.join(60)
    for t in threads:
        t.join(30)
    assert "error" not in result, result.get("error")
    return result, json.loads((tmp_path / "report" / "rounds.json").read_text()), answers


def _site(
    kit_root: Path,
    name: str,
    port: int,
    out: dict[str, object],
    give_up: float = 20.0,
    runner: Callable[[str, JobConfig], SiteRunner] = _runner,
) -> threading.Thread:
    def target() -> None:
        try:
            out[name] = run_site(
                kit_root / "sites" / name, runner, address=f"localhost:{port}", give_up_after_s=give_up
            )
        except Exception as exc:
            out[name] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_three_sites_over_mutual_tls_reach_the_simulators_model(tmp_path: Path) -> None:
    from confide import serde

    kits = _federation(tmp_path / "kits")
    job = _job(tmp_path)
    result, _, answers = _deployed(kits, job, tmp_path)
    final = serde.decode_arrays(Path(str(result["final"])).read_bytes())
    np.testing.assert_allclose(final["w"], simulated(rounds=3)["w"], rtol=1e-6)
    assert answers == dict.fromkeys(SITES, 3)


def test_secure_aggregation_over_mutual_tls_reaches_the_simulators_model(tmp_path: Path) -> None:
    from confide import serde
    from confide.server.secure_round import SecureSettings

    kits = _federation(tmp_path / "kits")
    job = _job(tmp_path).model_copy(update={"privacy": PrivacyConfig(secure_aggregation=True)})
    server, result = serve_in_thread(kits / "server", job)
    answers: dict[str, object] = {}

    def deployed(name: str, site_job: JobConfig) -> SiteRunner:
        """As `confide site` does: the site's privacy and its identity (key, certificate, CA, revocation list)
        from its kit; it signs its keys and checks every roster."""
        return private_runner(kits / "sites" / name, name, site_job, QuadraticTask(TARGETS[name], examples=10))

    port = int(result["port"])  # type: ignore[call-overload]
    threads = [_site(kits, name, port, answers, runner=deployed) for name in SITES]
    server.join(60)
    for t in threads:
        t.join(30)

    assert "error" not in result, result.get("error")
    final = serde.decode_arrays(Path(str(result["final"])).read_bytes())
    expected = simulate(
        FedAvg({"local_steps": 1, "lr": 0.5}),
        {n: QuadraticTask(t, examples=10) for n, t in TARGETS.items()},
        arrays(w=[0.0, 0.0]),
        LoopConfig(rounds=3, secure=SecureSettings()),
    ).arrays
    np.testing.assert_allclose(final["w"], expected["w"], atol=1e-5)
    assert answers == dict.fromkeys(SITES, 3 * 5)  # five secure-aggregation steps a round


def test_a_site_from_another_federation_cannot_connect(tmp_path: Path) -> None:
    kits = _federation(tmp_path / "kits")
    foreign = _federation(tmp_path / "foreign", name="other")
    job = _job(tmp_path, rounds=1)
    _server, result = serve_in_thread(kits / "server", job)
    answers: dict[str, object] = {}

    began = time.monotonic()
    _site(foreign, "site-1", int(result["port"]), answers, give_up=300.0).join(120)  # type: ignore[call-overload]

    assert isinstance(answers["site-1"], TransportError)
    assert time.monotonic() - began < 60  # reported at once, not after retrying for give_up (was: 10 minutes)
    assert "TLS" in str(answers["site-1"])


def test_a_revoked_site_is_refused_by_name(tmp_path: Path) -> None:
    kits = _federation(tmp_path / "kits")
    revoke_site(kits, "site-2", "laptop stolen")
    job = _job(tmp_path, rounds=1)
    _server, result = serve_in_thread(kits / "server", job)
    answers: dict[str, object] = {}

    _site(kits, "site-2", int(result["port"]), answers, give_up=2.0).join(30)  # type: ignore[call-overload]

    error = answers["site-2"]
    assert isinstance(error, TransportError) and "revoked" in str(error)


class WrongShape(QuadraticTask):
    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        super().train(arrays, config, round)
        return TrainRes(round=round, update=Arrays.from_dict({"w": np.zeros(5, np.float32)}), num_examples=10)


def test_nan_and_wrong_shape_updates_are_rejected_while_the_rest_aggregate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from confide import serde

    kits = _federation(tmp_path / "kits")
    job = _job(tmp_path, rounds=1)
    bad = {"site-2": QuadraticTask(TARGETS["site-2"], 10, nan=True), "site-3": WrongShape(TARGETS["site-3"], 10)}

    def runner(name: str, job: JobConfig) -> SiteRunner:
        return SiteRunner(name, bad.get(name) or QuadraticTask(TARGETS[name], examples=10))

    job = job.model_copy(update={"federation": job.federation.model_copy(update={"min_sites": 1, "start_sites": 3})})
    server, result = serve_in_thread(kits / "server", job)
    answers: dict[str, object] = {}
    threads = [
        threading.Thread(
            target=lambda n=name: answers.setdefault(
                n, run_site(kits / "sites" / n, runner, address=f"localhost:{result['port']}", give_up_after_s=20)
            ),
            daemon=True,
        )
        for name in SITES
    ]
    for t in threads:
        t.start()
    server.join(60)
    for t in threads:  # the sites leave once told the job is done: waited for, not slept on
        t.join(60)

    assert not server.is_alive() and not any(t.is_alive() for t in threads)
    rounds = json.loads((tmp_path / "report" / "rounds.json").read_text())
    assert rounds[0]["sites"] == ["site-1"]
    assert "NaN" in rounds[0]["failures"]["site-2"]
    assert "shape" in rounds[0]["failures"]["site-3"]
    final = serde.decode_arrays(Path(str(result["final"])).read_bytes())
    np.testing.assert_allclose(final["w"], [1.0, 0.0])  # only site-1's step: 0 + 0.5 * (2 - 0)
    told = [r.getMessage() for r in caplog.records if "the server says" in r.getMessage()]
    assert any("site-2" in m and "NaN" in m for m in told), told  # the rejected sites hear why
    assert any("site-3" in m and "shape" in m for m in told), told


def _corrupting(module: object, times: int) -> object:
    """A stand-in for the framing module whose first ``times`` transfers arrive with one byte flipped."""
    import types

    from confide.transport import framing

    left = [times]
    lock = threading.Lock()

    def message(payload, **header):  # type: ignore[no-untyped-def]
        with lock:
            corrupt = left[0] > 0
            left[0] -= corrupt
        for frame in framing.message(payload, **header):
            if corrupt and frame[:1] in (framing.DATA, framing.SINGLE):  # a payload byte, not the digest
                frame = frame[:-1] + bytes([frame[-1] ^ 1])
                corrupt = False
            yield frame

    return types.SimpleNamespace(**{**vars(framing), "message": message})


def test_a_transfer_broken_on_the_way_is_sent_again_not_the_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from confide import serde
    from confide.transport import grpc_client, grpc_server

    monkeypatch.setattr(grpc_server, "framing", _corrupting(grpc_server.framing, times=2))  # two instructions
    monkeypatch.setattr(grpc_client, "framing", _corrupting(grpc_client.framing, times=2))  # two updates
    kits = _federation(tmp_path / "kits")
    job = _job(tmp_path, rounds=2)
    result, rounds, _ = _deployed(kits, job, tmp_path)
    assert [sorted(r["sites"]) for r in rounds] == [SITES, SITES]  # no round lost a site to the broken transfers
    final = serde.decode_arrays(Path(str(result["final"])).read_bytes())
    np.testing.assert_allclose(final["w"], simulated(rounds=2)["w"], rtol=1e-6)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert logged.count("instruction transfer broken") == 2 and logged.count("transfer refused") == 2


def test_a_site_name_missing_from_the_roster_is_refused_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil
    from datetime import UTC, datetime

    from confide.provision_kit import CLIENT_AUTH, cert_pem, issue, key_pem, load_ca

    kits = _federation(tmp_path / "kits")
    ca_key, ca_cert = load_ca(kits)  # the CA signs a name that provisioning never issued
    key, cert = issue(
        ca_key,
        ca_cert,
        federation="fed",
        common_name="intruder",
        usage=CLIENT_AUTH,
        alt_names=[],
        now=datetime.now(UTC),
        days=30,
    )
    intruder = kits / "sites" / "intruder"
    shutil.copytree(kits / "sites" / "site-1", intruder)
    (intruder / "site.crt").write_bytes(cert_pem(cert))
    (intruder / "site.key").write_bytes(key_pem(key))
    _server, result = serve_in_thread(kits / "server", _job(tmp_path, rounds=1))
    answers: dict[str, object] = {}

    _site(kits, "intruder", int(result["port"]), answers, give_up=2.0).join(30)  # type: ignore[call-overload]

    assert isinstance(answers["intruder"], TransportError) and "roster" in str(answers["intruder"])
    assert any("refused a connection" in r.getMessage() and "roster" in r.getMessage() for r in caplog.records)


class LateInRoundOne(QuadraticTask):
    """Answers round 1 only once the server's trail says that round closed: late however loaded the machine (a
    fixed sleep of 2 s against a deadline of 1.5 s left the punctual sites 1.5 s to answer)."""

    trail: Path

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        if round == 1:
            assert wait_until(lambda: "round 1 closed" in _trail(self.trail)), "round 1 never closed"
        return super().train(arrays, config, round)


def test_a_result_arriving_after_its_round_closed_is_discarded_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kits = _federation(tmp_path / "kits")
    job = _job(tmp_path, rounds=3)
    # the deadline is what the punctual sites have to answer in (round 1 always lasts that long)
    federation = job.federation.model_copy(update={"min_sites": 2, "start_sites": 3, "round_deadline_s": 5.0})
    job = job.model_copy(update={"federation": federation})
    LateInRoundOne.trail = tmp_path

    def runner(name: str, job: JobConfig) -> SiteRunner:
        task = LateInRoundOne if name == "site-3" else QuadraticTask
        return SiteRunner(name, task(TARGETS[name], examples=10))

    server, result = serve_in_thread(kits / "server", job)
    answers: dict[str, object] = {}
    for name in SITES:
        threading.Thread(
            target=lambda n=name: answers.setdefault(
                n, run_site(kits / "sites" / n, runner, address=f"localhost:{result['port']}", give_up_after_s=20)
            ),
            daemon=True,
        ).start()
    server.join(120)

    assert "error" not in result, result.get("error")
    rounds = json.loads((tmp_path / "report" / "rounds.json").read_text())
    assert sorted(rounds[0]["sites"]) == ["site-1", "site-2"] and "deadline" in rounds[0]["failures"]["site-3"]
    assert any("arrived after its round closed; discarded" in r.getMessage() for r in caplog.records)
    assert sorted(rounds[-1]["sites"]) == SITES  # the late site is back


def test_a_failed_job_tells_the_sites_it_failed_and_keeps_the_rounds_it_ran(tmp_path: Path) -> None:
    """Before: the server's finally told every site "done", and the sites printed "job done" and exited 0; and
    rounds.json was written only at the end, so a failed job left none."""
    from confide.errors import JobFailed, RoundFailed

    kits = _federation(tmp_path / "kits")
    job = parse_job(
        {
            "data": {"root": str(tmp_path)},
            "federation": {"rounds": 2, "local_steps": 1, "min_sites": 3, "quorum_retries": 0},
            "report": {"out": str(tmp_path / "report")},
        }
    )
    server, result = serve_in_thread(kits / "server", job)
    answers: dict[str, object] = {}

    class FailsFromRound2(QuadraticTask):
        def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
            if round >= 2:
                raise RuntimeError("disk full")
            return super().train(arrays, config, round)

    def failing(name: str, job: JobConfig) -> SiteRunner:
        return SiteRunner(name, FailsFromRound2(TARGETS[name], examples=10))

    threads = [_site(kits, name, int(result["port"]), answers, runner=failing) for name in SITES]  # type: ignore[call-overload]
    server.join(90)
    for t in threads:
        t.join(60)

    assert isinstance(result.get("error"), RoundFailed)
    rounds = json.loads((tmp_path / "report" / "rounds.json").read_text())  # written as round 1 closed
    assert [r["round"] for r in rounds] == [1]
    for name in SITES:
        assert isinstance(answers[name], JobFailed), answers[name]
        assert "failed" in str(answers[name]) and "disk full" in str(answers[name])


def test_a_second_server_on_a_taken_port_refuses_to_start(tmp_path: Path) -> None:
    """Before: gRPC's SO_REUSEPORT let both print "listening" while the kernel split the sites between them."""
    from confide.errors import ConfideError

    kits = _federation(tmp_path / "kits")
    _, result = serve_in_thread(kits / "server", _job(tmp_path / "one"))

    with pytest.raises(ConfideError, match=r"cannot listen on 127\.0\.0\.1:"):
        serve(kits / "server", _job(tmp_path / "two"), initial=lambda _: arrays(w=[0.0, 0.0]), port=int(result["port"]))  # type: ignore[call-overload]


def _listening(port: int) -> set[str]:
    """The local addresses (hex, as the kernel lists them) of the sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_the_server_listens_on_its_kits_address_not_every_interface(tmp_path: Path) -> None:
    """Before: the server always bound every interface ([::])."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux's /proc/net/tcp to see where a socket listens")
    kits = _federation(tmp_path / "kits")  # its host: 127.0.0.1
    _, result = serve_in_thread(kits / "server", _job(tmp_path))

    addresses = _listening(int(result["port"]))  # type: ignore[call-overload]

    assert addresses  # 127.0.0.1 only (as itself or IPv4-mapped), not 0.0.0.0 or ::
    assert all(a.endswith("0100007F") for a in addresses), addresses


def _busy_until(done: threading.Event, started: threading.Event) -> Callable[[memoryview], bytes]:
    """A site's work: on every instruction, busy until ``done`` is set (a site still training when the job ends),
    waited for rather than slept on, so that the test's steps come first however loaded the machine."""

    def work(_instruction: memoryview) -> bytes:
        started.set()
        assert done.wait(LONG), "the test never let the site finish its step"
        return b"late answer"

    return work


def test_a_site_told_the_job_is_over_leaves_soon_after_the_server_is_gone(tmp_path: Path) -> None:
    """Before: a site still training when the job ended, and late to collect "done" (the server waits 60 s), kept
    retrying the vanished server for give_up_after_s (10 minutes) and never exited. Now heartbeats tell it the job
    is over, and once the server has gone it leaves after ``after_done_s``, saying so."""
    from tests.transport.hostile import serve as serve_bare

    federation = serve_bare(_federation(tmp_path / "kits"), heartbeat_s=0.2, site_timeout_s=30.0)
    started, server_gone = threading.Event(), threading.Event()
    client = federation.honest("site-1", _busy_until(server_gone, started), give_up_after_s=300.0, after_done_s=1.0)
    service = federation.service
    assert len(service.wait_for_sites(1, 30)) == 1
    rounds = threading.Thread(target=lambda: list(service.exchange({"site-1": b"train"}, deadline_s=0.5)), daemon=True)
    rounds.start()
    assert started.wait(30)
    rounds.join(30)  # the round closed without the busy site
    service.close()  # the job is over ...
    deadline = time.monotonic() + 30
    while client._over_at is None and time.monotonic() < deadline:  # ... and a heartbeat tells the site
        time.sleep(0.05)
    federation.stop()  # the server goes before the site has finished its step
    stopped = time.monotonic()
    server_gone.set()

    federation.threads[0].join(60)

    assert not federation.threads[0].is_alive(), "the site kept retrying a server that had finished the job"
    assert time.monotonic() - stopped < 60
    assert client.answered == 0 and client.final is None
    assert any("went away" in n for n in client.notices)


def test_a_late_answer_after_the_job_ended_collects_the_final_model(tmp_path: Path) -> None:
    """A site whose answer arrives after the last round closed is told the job is over (not to retry) and pulls
    "done" with the final model at once."""
    from confide import serde
    from tests.transport.hostile import serve as serve_bare

    federation = serve_bare(_federation(tmp_path / "kits"), heartbeat_s=0.2, site_timeout_s=30.0)
    job_over = threading.Event()
    client = federation.honest("site-1", _busy_until(job_over, threading.Event()), give_up_after_s=300.0)
    service = federation.service
    try:
        assert len(service.wait_for_sites(1, 30)) == 1
        list(service.exchange({"site-1": b"train"}, deadline_s=0.2))
        service.close(final=serde.encode_arrays(arrays(w=[1.0, 2.0])))
        job_over.set()  # the site's answer comes after the last round closed
        assert service.wait_for_farewells(60) == []
        federation.threads[0].join(30)
    finally:
        federation.stop()

    assert not federation.threads[0].is_alive() and client.final is not None
    np.testing.assert_allclose(client.final["w"], [1.0, 2.0])
    assert client.answered == 0


def test_the_server_keeps_a_timestamped_trail_of_joins_rounds_and_rejections(tmp_path: Path) -> None:
    """Before: logs were WARNING-only on stderr, without timestamps or a file; joins and rounds never appeared."""
    import re

    kits = _federation(tmp_path / "kits")
    job = _job(tmp_path, rounds=2)
    federation = job.federation.model_copy(update={"min_sites": 2, "start_sites": 3})
    job = job.model_copy(update={"federation": federation})

    def runner(name: str, job: JobConfig) -> SiteRunner:
        return SiteRunner(name, QuadraticTask(TARGETS[name], examples=10, nan=name == "site-3"))

    server, result = serve_in_thread(kits / "server", job)
    answers: dict[str, object] = {}
    threads = [_site(kits, name, int(result["port"]), answers, runner=runner) for name in SITES]  # type: ignore[call-overload]
    server.join(90)
    for t in threads:
        t.join(30)

    assert "error" not in result, result.get("error")
    lines = (tmp_path / "report" / "server.log").read_text().splitlines()
    stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|ERROR) confide\."
    assert lines and all(re.match(stamp, line) for line in lines), lines[:5]
    text = "\n".join(lines)
    for site in SITES:
        assert f"site {site} joined" in text
    assert "round 1 of 2: 3 site(s) take part" in text
    assert re.search(r"round 2 closed in [\d.]+ s .*accepted site-1, site-2; left out: site-3: .*NaN", text)
    assert "job done after round 2" in text


def test_a_site_whose_server_never_answers_gives_up_in_bounded_time_and_says_so(tmp_path: Path) -> None:
    import socket

    kits = _federation(tmp_path / "kits")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    answers: dict[str, object] = {}
    began = time.monotonic()

    _site(kits, "site-1", port, answers, give_up=3.0).join(120)

    assert time.monotonic() - began < 60
    error = answers["site-1"]
    assert isinstance(error, TransportError)
    assert f"localhost:{port} has been unreachable for 3 s" in str(error) and "giving up" in str(error)


class _SlowTask(QuadraticTask):
    """Trains for ``seconds`` of wall time, as a real site's local steps would."""

    def __init__(self, target: Arrays, seconds: float) -> None:
        super().__init__(target, examples=10)
        self.seconds = seconds

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        time.sleep(self.seconds)
        return super().train(arrays, config, round)


def test_a_deployed_rounds_coordination_is_its_time_less_the_slowest_site_not_the_sum(tmp_path: Path) -> None:
    """Three sites train 0.4 s each at once: the round waits for one of them, not for 1.2 s of site work (the old
    sum exceeded the round's own time, and rounds.json printed a coordination time of 0)."""
    kits = _federation(tmp_path / "kits")
    job = _job(tmp_path, rounds=1)
    server, result = serve_in_thread(kits / "server", job)
    answers: dict[str, object] = {}

    def slow(name: str, job: JobConfig) -> SiteRunner:
        return SiteRunner(name, _SlowTask(TARGETS[name], seconds=0.4))

    threads = [_site(kits, name, int(result["port"]), answers, runner=slow) for name in SITES]  # type: ignore[call-overload]
    server.join(120)
    for t in threads:
        t.join(60)

    assert "error" not in result, result.get("error")
    (only,) = json.loads((tmp_path / "report" / "rounds.json").read_text())
    assert sorted(only["sites"]) == SITES
    assert only["site_seconds"] >= 0.4  # the slowest site's training counts
    assert only["site_seconds"] < only["seconds"]  # ... once: the three trained at the same time
    assert only["coordination_seconds"] == pytest.approx(only["seconds"] - only["site_seconds"])
    assert only["coordination_seconds"] > 0


def test_the_server_listens_while_it_builds_its_model_so_sites_join_meanwhile(tmp_path: Path) -> None:
    """Building the initial model (importing torch, for most jobs) takes seconds: the server listens first, and the
    sites join while it builds. Here the model is only ready once a site has joined."""
    from confide import serde

    kits = _federation(tmp_path / "kits")
    job = _job(tmp_path, rounds=1)
    port: dict[str, int] = {}
    listening = threading.Event()
    answers: dict[str, object] = {}

    def on_listen(bound: int) -> None:
        port["port"] = bound
        listening.set()

    def initial(_: JobConfig) -> Arrays:
        if not listening.wait(30):
            raise AssertionError("the server builds its model before it listens")
        site = _site(kits, "site-1", port["port"], answers)
        deadline = time.monotonic() + 60
        while "site-1" not in (log_text := _trail(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "site site-1 joined" in log_text
        site.join(0)  # still running: it waits for its instruction
        return arrays(w=[0.0, 0.0])

    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["final"] = serve(kits / "server", job, initial=initial, port=0, wait_s=60, on_listen=on_listen)
        except BaseException as exc:  # reported to the test
            result["error"] = exc

    server = threading.Thread(target=target, daemon=True)
    server.start()
    assert listening.wait(30)
    others = [_site(kits, name, port["port"], answers) for name in SITES[1:]]
    server.join(120)
    for t in others:
        t.join(30)

    assert "error" not in result, result.get("error")
    final = serde.decode_arrays(Path(str(result["final"])).read_bytes())
    assert final["w"].shape == (2,)
    assert sorted(json.loads((tmp_path / "report" / "rounds.json").read_text())[0]["sites"]) == SITES


def _trail(tmp_path: Path) -> str:
    log = tmp_path / "report" / "server.log"
    return log.read_text() if log.exists() else ""


def _final_models(tmp_path: Path, *, send: bool) -> tuple[dict[str, object], dict[str, Arrays], bool]:
    """A one-round job with federation.send_final_model ``send``: the server's result, the final model each site
    received, and whether every site thread left."""
    kits = _federation(tmp_path / "kits")
    job = _job(tmp_path, rounds=1)
    job = job.model_copy(update={"federation": job.federation.model_copy(update={"send_final_model": send})})
    server, result = serve_in_thread(kits / "server", job)
    received: dict[str, Arrays] = {}

    def site(name: str) -> None:
        run_site(
            kits / "sites" / name,
            _runner,
            address=f"localhost:{result['port']}",
            give_up_after_s=20,
            on_final=lambda _job, final: received.setdefault(name, final),
        )

    threads = [threading.Thread(target=site, args=(name,), daemon=True) for name in SITES]
    for t in threads:
        t.start()
    server.join(60)
    for t in threads:
        t.join(30)
    return result, received, not any(t.is_alive() for t in threads)


def test_a_job_that_keeps_its_final_model_at_the_server_sends_it_to_no_site(tmp_path: Path) -> None:
    """federation.send_final_model: false spares every site the final model's transfer; the server keeps it."""
    from confide import serde

    result, received, all_left = _final_models(tmp_path, send=False)

    assert "error" not in result, result.get("error")
    assert all_left  # every site left, told the job is done
    assert received == {}  # ... and none was sent the model
    assert serde.decode_arrays(Path(str(result["final"])).read_bytes())["w"].shape == (2,)  # the server has it


def test_by_default_every_site_leaves_with_the_final_model(tmp_path: Path) -> None:
    result, received, all_left = _final_models(tmp_path, send=True)

    assert "error" not in result, result.get("error")
    assert all_left and sorted(received) == SITES


@pytest.mark.parametrize(
    ("details", "permanent"),
    [
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:36639: Tls handshake failed "
            "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
            "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK",
            True,
        ),
        ("Peer name localhost is not in peer certificate", True),
        ("SSL_ERROR_SSL: error:10000418:SSL routines:OPENSSL_internal:TLSV1_ALERT_UNKNOWN_CA", True),
        (
            "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:32785: Handshake read "
            "failed (Socket closed)",
            False,
        ),
        ("UNAVAILABLE: ipv4:127.0.0.1:42057: Handshake read failed (Endpoint closing)", False),
        ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Connection refused", False),
    ],
)
def test_only_a_handshake_refused_over_a_certificate_stops_a_site_retrying(details: str, permanent: bool) -> None:
    """A handshake the network cut short (a partition, a reset) is tried again: the site once gave up on one."""
    from confide.transport.grpc_client import _tls_failure

    assert _tls_failure(details) is permanent


def test_a_deployment_trains_the_seeded_sample_of_sites_the_simulator_trains(tmp_path: Path) -> None:
    """federation.fraction over gRPC: each round's sample is the one the simulator draws for the same job, and the
    model is the simulator's."""
    kits = _federation(tmp_path / "kits")
    job = parse_job(
        {
            "seed": 11,
            "data": {"root": str(tmp_path)},
            "task": {"lr": 0.5},
            "federation": {"rounds": 4, "local_steps": 1, "min_sites": 2, "start_sites": 3, "fraction": 0.67},
            "report": {"out": str(tmp_path / "report")},
        }
    )
    result, rounds, _ = _deployed(kits, job, tmp_path)
    drawn = [sample_sites(SITES, 0.67, 2, seed=11, round=r) for r in range(1, 5)]
    assert [sorted(r["sites"]) for r in rounds] == drawn and all(len(d) == 2 for d in drawn)
    assert len({tuple(d) for d in drawn}) > 1  # the sample changes from round to round
    expected = simulate(
        FedAvg({"local_steps": 1, "lr": 0.5}),
        {n: QuadraticTask(t, examples=10) for n, t in TARGETS.items()},
        arrays(w=[0.0, 0.0]),
        LoopConfig(rounds=4, min_sites=2, fraction=0.67, sample_seed=11),
    ).arrays
    final = serde.decode_arrays(Path(str(result["final"])).read_bytes())
    np.testing.assert_allclose(final["w"], expected["w"], rtol=1e-6)
