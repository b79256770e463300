"""The health socket against real clients: HAProxy 2.6 (agent-check, httpchk, tcp-check), Nagios check_tcp and
check_http, nc, ``teleinfo status``, and abusive clients.

The state is driven by a real :class:`Stats` (the pipeline's own counter object) that the test feeds like the
reader does.  Every server listens on 127.0.0.1 on a free port and is stopped by the test that started it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.health import HealthServer, evaluate, public_snapshot
from appliance.health.config import HealthConfig
from appliance.stats import OutputSnapshot, SourceSnapshot, Stats, StatsSnapshot

from .probes import Feeder, open_fds, rss_kib
from .util import free_port, wait_until

REPO = Path(__file__).resolve().parent.parent
PLUGINS = Path("/usr/lib/nagios/plugins")
DOWN_AFTER = 2.0
METER = "012345678901"


def config(**changes: object) -> HealthConfig:
    base: dict[str, object] = {"bind": "127.0.0.1", "port": free_port(), "down_after": DOWN_AFTER, "read_timeout": 1.0}
    base.update(changes)
    return HealthConfig(**base)


@pytest.fixture
def stats() -> Stats:
    return Stats()


@pytest.fixture
def serve(stats: Stats) -> Iterator[Callable[..., HealthServer]]:
    servers: list[HealthServer] = []

    def start(**changes: object) -> HealthServer:
        server = HealthServer(config(**changes), stats)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        t0 = time.monotonic()
        assert server.stop(1.0)
        assert time.monotonic() - t0 < 1.0


def port_of(server: HealthServer) -> int:
    assert server.address is not None
    return server.address[1]


def read_all(port: int, send: bytes = b"", shut: bool = False, timeout: float = 3.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if send:
            s.sendall(send)
        if shut:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    raw = read_all(port, request)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("ascii").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    return http(port, f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())


def agent_line(port: int) -> str:
    return read_all(port).decode("ascii")


# --- the state rules (pure) ------------------------------------------------------------------------------
def snap(age: float | None, outputs: dict[str, str] | None = None, uptime: float = 100.0) -> StatsSnapshot:
    return StatsSnapshot(
        uptime_s=uptime,
        frames=120,
        last_frame_age_s=age,
        outputs={name: OutputSnapshot(state=state) for name, state in (outputs or {}).items()},
    )


@pytest.mark.parametrize(
    ("snapshot", "line", "weight", "status"),
    [
        (snap(1.2), "up ready 100% #ok frames=120 age=1.2s", 100, 200),
        (snap(1.2, {"mqtt": "up", "influx": "starting"}), "up ready 100% #ok frames=120 age=1.2s", 100, 200),
        (
            snap(0.5, {"mqtt": "failing", "udp": "up"}),
            "up ready 50% #degraded: mqtt failing, frames=120 age=0.5s",
            50,
            200,
        ),
        (snap(0.5, {"mqtt": "failing", "udp": "failing"}), "drain 0% #all outputs failing: mqtt,udp", 0, 503),
        (snap(0.5, {"mqtt": "failing", "old": "stopped"}), "drain 0% #all outputs failing: mqtt", 0, 503),
        (snap(63.0, {"mqtt": "failing"}), "down 0% #no TIC frame for 63s", 0, 503),
        (snap(None, uptime=1.0), "up ready 100% #starting: no frame yet", 100, 200),
        (snap(None, uptime=75.0), "down 0% #no TIC frame since start 75s ago", 0, 503),
        (  # the adapter is missing: down at once, with the reason (not "starting" for down_after seconds)
            replace(
                snap(None, uptime=1.0),
                source=SourceSnapshot(state="lost", detail="cannot open /dev/ttyUSB0: No such file"),
            ),
            "down 0% #no meter: cannot open /dev/ttyUSB0: No such file",
            0,
            503,
        ),
    ],
)
def test_state_rules(snapshot: StatsSnapshot, line: str, weight: int, status: int) -> None:
    state = evaluate(snapshot, HealthConfig(down_after=60))
    assert (state.line, state.weight, state.http_status) == (line, weight, status)
    assert state.line.split()[0] == state.state and "%" in state.line.split("#")[0]


def test_personal_data_stays_out_unless_exposed() -> None:
    error = f"publish to teleinfo/{METER}/PAPP refused, PRM 12345678901234"
    outputs = {"mqtt": OutputSnapshot(state="failing", last_error=error), "udp": OutputSnapshot(state="up")}
    s = replace(snap(1.0), meter=METER, outputs=outputs)
    hidden = json.dumps(public_snapshot(s, HealthConfig())) + evaluate(s, HealthConfig()).line
    assert METER not in hidden and "12345678901234" not in hidden and '"meter"' not in hidden
    shown = evaluate(s, HealthConfig(expose_meter=True)).line
    assert shown.startswith(f"up ready 50% #meter={METER} degraded")
    assert public_snapshot(s, HealthConfig(expose_meter=True))["meter"] == METER


# --- the protocol, with a real Stats ---------------------------------------------------------------------
def test_silent_client_reads_the_agent_line_after_the_peek(serve: Callable[..., HealthServer], stats: Stats) -> None:
    port = port_of(serve())
    stats.frame(12)
    t0 = time.monotonic()
    line = agent_line(port)
    elapsed = time.monotonic() - t0
    assert line.startswith("up ready 100% #ok frames=1 age=") and line.endswith("s\n") and line.count("\n") == 1
    assert 0.12 < elapsed < 1.0  # the ~150 ms peek, then the server closes
    # A client that shuts its side down is done talking: no need to wait for the peek.
    t0 = time.monotonic()
    assert read_all(port, shut=True).startswith(b"up ready 100%")
    assert time.monotonic() - t0 < 0.12
    # HAProxy's agent-send and any other non-HTTP bytes get the line too.
    assert read_all(port, b"status\n").startswith(b"up ready 100%")


def test_http_answers(serve: Callable[..., HealthServer], stats: Stats) -> None:
    port = port_of(serve())
    stats.frame(10, Counter({"checksum": 2, "format": 1}))
    stats.rejected(Counter({"interrupted": 1}))
    stats.source("open", mode="historique", nbytes=1234)
    stats.update_output("multicast", state="up", sent=5, queued=2)
    stats.update_output("influx", state="failing", failed=3, spooled=40, last_error=f"write teleinfo,meter={METER}")
    stats.set_extra("checks", {"nmap": {"result": "ok", "duration_s": 0.05}})
    stats.set_meter(METER)

    for path in ("/", "/health", "/health?verbose=1"):
        status, headers, body = get(port, path)
        assert status == 200 and headers["content-type"].startswith("text/plain") and headers["connection"] == "close"
        assert body.startswith(b"up ready 50% #degraded: influx failing") and int(headers["content-length"]) == len(
            body
        )
    status, headers, body = http(port, b"HEAD /health HTTP/1.0\r\n\r\n")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0

    status, headers, body = get(port, "/status")
    assert status == 200 and headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["health"]["state"] == "up" and doc["health"]["weight"] == 50 and doc["health"]["degraded"]
    assert doc["frames"] == 1 and doc["groups"] == 10
    assert doc["rejects"] == {"checksum": 2, "format": 1, "interrupted": 1}
    assert 0 <= doc["last_frame_age_s"] < 5
    assert doc["source"]["state"] == "open" and doc["source"]["mode"] == "historique"
    assert doc["outputs"]["multicast"]["state"] == "up" and doc["outputs"]["multicast"]["sent"] == 5
    assert doc["outputs"]["multicast"]["queued"] == 2 and doc["outputs"]["influx"]["state"] == "failing"
    # Every counter of the snapshot is there (personal data aside), whatever sections Stats grows later.
    expected = public_snapshot(stats.snapshot(), HealthConfig())
    for volatile in ("uptime_s", "last_frame_age_s"):
        del expected[volatile], doc[volatile]
    assert {k: v for k, v in doc.items() if k not in ("health", "version")} == expected
    assert doc["outputs"]["influx"]["spooled"] == 40 and doc["outputs"]["influx"]["failed"] == 3
    assert doc["checks"] == {"nmap": {"result": "ok", "duration_s": 0.05}}
    assert METER not in body.decode() and "meter" not in doc  # personal data: out by default

    # HTTP/0.9-style one-liners (echo "GET /status" | nc) work; anything else under HTTP is 404 or 400.
    assert json.loads(read_all(port, b"GET /status\n", shut=True))["frames"] == 1
    assert get(port, "/metrics")[0] == 404
    assert http(port, b"GET / FTP/1.0\r\n\r\n")[0] == 400
    assert http(port, b"GET /a b HTTP/1.0\r\n\r\n")[0] == 400
    assert http(port, b"GET / HTTP/1.0\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")[0] == 400


def test_meter_shown_when_configured(serve: Callable[..., HealthServer], stats: Stats) -> None:
    port = port_of(serve(expose_meter=True))
    stats.frame(10)
    stats.set_meter(METER)
    assert agent_line(port).startswith(f"up ready 100% #meter={METER} ok")
    assert json.loads(get(port, "/status")[2])["meter"] == METER


@pytest.mark.slow
def test_down_when_frames_stop_and_up_when_they_resume(serve: Callable[..., HealthServer], stats: Stats) -> None:
    port = port_of(serve())
    assert agent_line(port).startswith("up ready 100% #starting")  # within down_after of the start
    wait_until(lambda: agent_line(port).startswith("down 0% #no TIC frame since start"), DOWN_AFTER + 2)
    assert get(port, "/health")[0] == 503
    with Feeder(lambda _i: stats.frame(10), 0.1):
        wait_until(lambda: agent_line(port).startswith("up ready 100% #ok"), 3)
        assert get(port, "/health")[0] == 200
    t0 = time.monotonic()
    wait_until(lambda: agent_line(port).startswith("down 0% #no TIC frame for"), DOWN_AFTER + 2)
    assert DOWN_AFTER - 0.5 < time.monotonic() - t0
    assert get(port, "/health")[0] == 503


# --- real clients ------------------------------------------------------------------------------------------
def need(binary: str) -> str:
    path = shutil.which(binary) or (str(PLUGINS / binary) if (PLUGINS / binary).exists() else None)
    if path is None:
        pytest.skip(f"{binary} not installed (apt-get install haproxy monitoring-plugins-basic netcat-openbsd)")
    return path


def run(*argv: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.integration
def test_nc_prints_the_line(serve: Callable[..., HealthServer], stats: Stats) -> None:
    nc = need("nc")
    port = port_of(serve())
    stats.frame(10)
    out = subprocess.run(
        [nc, "-w2", "127.0.0.1", str(port)], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10
    )
    assert out.stdout.startswith("up ready 100% #ok frames=1") and out.stdout.count("\n") == 1


@pytest.mark.slow
@pytest.mark.integration
def test_nagios_check_tcp_and_check_http(serve: Callable[..., HealthServer], stats: Stats) -> None:
    check_tcp, check_http = need("check_tcp"), need("check_http")
    port = str(port_of(serve()))

    def checks() -> tuple[int, int, str]:
        tcp = run(check_tcp, "-H", "127.0.0.1", "-p", port, "-e", "up ready", "-M", "crit")
        web = run(check_http, "-H", "127.0.0.1", "-p", port, "-u", "/health")
        return tcp.returncode, web.returncode, tcp.stdout + web.stdout

    with Feeder(lambda _i: stats.frame(10), 0.1):
        stats.update_output("mqtt", state="up")
        stats.update_output("udp", state="up")
        tcp, web, out = checks()
        assert (tcp, web) == (0, 0), out
        assert "TCP OK" in out and "[up ready 100% #ok" in out and "HTTP OK" in out
        stats.update_output("mqtt", state="failing")  # degraded: still up for both
        assert checks()[:2] == (0, 0)
        stats.update_output("udp", state="failing")  # drain: not "up ready", 503
        tcp, web, out = checks()
        assert (tcp, web) == (2, 2), out
        assert "TCP CRITICAL" in out and "HTTP CRITICAL" in out and "503" in out
        stats.update_output("mqtt", state="up")
        stats.update_output("udp", state="up")
        assert checks()[:2] == (0, 0)
    wait_until(lambda: checks()[:2] == (2, 2), DOWN_AFTER + 5)  # the meter stopped


class HAProxy:
    """haproxy -db in the foreground with a stats socket; ``servers()`` reads its own view of every server."""

    def __init__(self, tmp: Path, health_port: int) -> None:
        self.sock_path = tmp / "admin.sock"
        self.cfg_path = tmp / "haproxy.cfg"
        self.log_path = tmp / "haproxy.log"
        hp = health_port
        # Silent checks (agent without agent-send, tcp-check expect) take up to ~0.35 s: the 150 ms peek, plus up to
        # 200 ms by which HAProxy 2.6 delays the last ACK of the handshake (seen with tcpdump), so the timeouts
        # (agent-inter, timeout check) stay at 1 s, as in docs/NETWORK.md §2.2.
        check = "check inter 400ms rise 1 fall 1"
        agent = f"agent-check agent-port {hp} agent-inter 1s"
        self.cfg_path.write_text(
            f"global\n    stats socket {self.sock_path} level admin\n"
            "defaults\n    mode tcp\n    timeout connect 1s\n    timeout check 1s\n"
            "    timeout client 5s\n    timeout server 5s\n"
            "backend be_agent\n"
            f"    server s1 127.0.0.1:{hp} {check} {agent} weight 100\n"
            f'    server s2 127.0.0.1:{hp} {check} {agent} weight 100 agent-send "status\\n"\n'
            "backend be_http\n    option httpchk GET /health\n    http-check expect status 200\n"
            f"    server x1 127.0.0.1:{hp} {check}\n"
            "backend be_tcp\n    option tcp-check\n    tcp-check expect rstring ^up\n"
            f"    server h1 127.0.0.1:{hp} {check}\n"
        )
        checked = run("haproxy", "-c", "-f", str(self.cfg_path))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.cfg_path)], stdout=self.log, stderr=self.log)
        wait_until(self.sock_path.exists, 10)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()

    def servers(self) -> dict[str, tuple[str, int]]:
        """``{"be_agent/s1": ("UP", 100), ...}`` from ``show stat``."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect(str(self.sock_path))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {
            f"{r['pxname']}/{r['svname']}": (r["status"], int(r["weight"] or 0))
            for r in rows
            if r["svname"] not in ("FRONTEND", "BACKEND")
        }


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(90)
def test_haproxy_agent_httpchk_and_tcp_check(serve: Callable[..., HealthServer], stats: Stats, tmp_path: Path) -> None:
    need("haproxy")
    server = serve()
    haproxy = HAProxy(tmp_path, port_of(server))
    try:

        def expect(agent: str, weight: int, others: str) -> None:
            def reached() -> bool:
                view = haproxy.servers()
                return (
                    all(view[s][0].startswith(agent) and view[s][1] == weight for s in ("be_agent/s1", "be_agent/s2"))
                    and view["be_http/x1"][0].startswith(others)
                    and view["be_tcp/h1"][0].startswith(others)
                )

            try:
                wait_until(reached, DOWN_AFTER + 6)
            except AssertionError:
                raise AssertionError(f"HAProxy sees {haproxy.servers()}, wanted {agent} {weight} / {others}") from None

        with Feeder(lambda _i: stats.frame(10), 0.1):
            stats.update_output("mqtt", state="up")
            stats.update_output("udp", state="up")
            expect("UP", 100, "UP")
            stats.update_output("mqtt", state="failing")
            expect("UP", 50, "UP")
            stats.update_output("udp", state="failing")
            expect("DRAIN", 0, "DOWN")
            stats.update_output("mqtt", state="up")
            stats.update_output("udp", state="up")
            expect("UP", 100, "UP")
        expect("DOWN", 0, "DOWN")  # the simulated meter stopped: down within down_after
        with Feeder(lambda _i: stats.frame(10), 0.1):
            expect("UP", 100, "UP")  # and HAProxy takes it back as soon as frames resume
    finally:
        haproxy.stop()
    log = haproxy.log_path.read_text(errors="replace")
    assert "via agent : down (no TIC frame for" in log


# --- bounds and abuse -----------------------------------------------------------------------------------
def test_excess_connections_get_the_line_at_once(serve: Callable[..., HealthServer], stats: Stats) -> None:
    server = serve(max_connections=4, read_timeout=5.0)
    port = port_of(server)
    stats.frame(10)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        for s in held:
            s.sendall(b"GE")  # an HTTP request that never completes holds its slot
        time.sleep(0.3)
        t0 = time.monotonic()
        assert agent_line(port).startswith("up ready 100%")
        assert time.monotonic() - t0 < 0.12  # no peek: refused with the line, never queued
    finally:
        for s in held:
            s.close()


def test_stop_is_prompt_with_clients_connected(stats: Stats) -> None:
    server = HealthServer(config(read_timeout=30.0), stats)
    server.start()
    port = port_of(server)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    for s in held:
        s.sendall(b"GET / HTTP/1.0\r\n")
    time.sleep(0.2)
    t0 = time.monotonic()
    assert server.stop(1.0)
    assert time.monotonic() - t0 < 1.0
    for s in held:
        s.settimeout(2)
        assert s.recv(100) == b""
        s.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


def slowloris(port: int, seconds: float, closed: list[float]) -> None:
    """One byte per second of an HTTP request; records when the server closed the connection."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(1.0)
        for byte in b"GET /health HTTP/1.0\r\nX: y\r\n"[: int(seconds)]:
            try:
                s.sendall(bytes([byte]))
                if s.recv(4096) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        closed.append(time.monotonic() - t0)


def short_connection(port: int, rng: random.Random) -> None:
    kind = rng.randrange(4)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            if kind == 0:
                return  # connect and go
            if kind == 1:
                s.shutdown(socket.SHUT_WR)
                assert s.recv(4096).startswith((b"up", b"down", b"drain"))
            elif kind == 2:
                s.sendall(rng.randbytes(rng.randrange(1, 3000)))
                s.recv(4096)
            else:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (ConnectionResetError, BrokenPipeError):
        pass  # random bytes may be answered and closed before they are all sent


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_abuse_never_stalls_the_reader_nor_leaks(serve: Callable[..., HealthServer], stats: Stats) -> None:
    port = port_of(serve(max_connections=16, read_timeout=1.0))
    fds = open_fds()
    rng = random.Random(42)
    with ThreadPoolExecutor(8) as pool:  # warm-up: first-use allocations are not a leak
        list(pool.map(lambda _i: short_connection(port, rng), range(200)))
    wait_until(lambda: open_fds() <= fds, 5)
    rss = rss_kib()

    with Feeder(lambda _i: stats.frame(10), 0.005) as feeder:
        closed: list[float] = []
        loris = [threading.Thread(target=slowloris, args=(port, 6, closed)) for _ in range(3)]
        for t in loris:
            t.start()
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _i: short_connection(port, rng), range(1000)))
        for _ in range(50):  # random bytes, then read whatever comes back
            read_all(port, rng.randbytes(rng.randrange(1, 200)))
        # A normal client is served promptly all along.
        t1 = time.monotonic()
        assert agent_line(port).startswith("up ready 100%")
        assert time.monotonic() - t1 < 1.0
        for t in loris:
            t.join(10)
        elapsed = time.monotonic() - t0
    assert len(closed) == 3 and max(closed) < 1.0 + 1.5  # read_timeout, then 408 and close
    assert feeder.max_gap < 0.5, f"the reader stalled for {feeder.max_gap:.3f} s"
    assert feeder.count > 0.3 * elapsed / 0.005
    wait_until(lambda: open_fds() <= fds, 5)
    assert rss_kib() - rss < 10_000, f"RSS grew from {rss} to {rss_kib()} KiB"
    assert agent_line(port).startswith("up ready 100%")


# --- teleinfo status -------------------------------------------------------------------------------------
def teleinfo_status(port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "appliance", "status", "--port", str(port), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=env,
        check=False,
    )


@pytest.mark.slow
def test_teleinfo_status_exit_codes(serve: Callable[..., HealthServer], stats: Stats) -> None:
    port = port_of(serve())
    stats.source("open", mode="standard")
    stats.update_output("multicast", state="up", sent=7)
    stats.update_output("influx", state="up")
    with Feeder(lambda _i: stats.frame(10), 0.1):
        out = teleinfo_status(port)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.startswith("TELEINFO OK - up ready 100% #ok")
        assert "output     multicast up: sent 7" in out.stdout and "source     open standard" in out.stdout
        stats.update_output("influx", state="failing", last_error="HTTP 503")
        out = teleinfo_status(port)
        assert out.returncode == 1 and out.stdout.startswith("TELEINFO WARNING - up ready 50%")
        assert "last error: HTTP 503" in out.stdout
        stats.update_output("multicast", state="failing")
        assert teleinfo_status(port).returncode == 1  # drain
        out = teleinfo_status(port, "--json")
        assert out.returncode == 1 and json.loads(out.stdout)["health"]["state"] == "drain"
    wait_until(lambda: stats.last_frame_age() > DOWN_AFTER, DOWN_AFTER + 2)
    out = teleinfo_status(port)
    assert out.returncode == 2 and out.stdout.startswith("TELEINFO CRITICAL - down 0% #no TIC frame for")


def test_teleinfo_status_unreachable() -> None:
    out = teleinfo_status(free_port(), "--timeout", "2")
    assert out.returncode == 2
    assert out.stdout.count("\n") == 1 and "unreachable" in out.stdout and "refused" in out.stdout


# --- issue 15: a handful of connections must not deny the service ---------------------------------------------
def hold_requests(port: int, n: int, request: bytes, stop: threading.Event, source: str = "127.0.0.1") -> list[int]:
    """``n`` clients that each send ``request`` and keep the connection open, re-opening as soon as the server
    answers or closes (the attack that made every HTTP check fail); returns a one-element list counting the
    re-openings, updated until ``stop`` is set."""
    opened = [0]

    def holder() -> None:
        while not stop.is_set():
            try:
                with socket.socket() as s:
                    s.bind((source, 0))
                    s.settimeout(0.5)
                    s.connect(("127.0.0.1", port))
                    opened[0] += 1
                    s.sendall(request)
                    while not stop.is_set():
                        try:
                            if not s.recv(4096):
                                break
                        except TimeoutError:
                            continue
            except OSError:
                time.sleep(0.01)

    for _ in range(n):
        threading.Thread(target=holder, daemon=True).start()
    return opened


@pytest.mark.slow
@pytest.mark.integration
def test_unfinished_http11_requests_never_fail_the_http_checks(
    serve: Callable[..., HealthServer], stats: Stats
) -> None:
    curl = need("curl")
    port = port_of(serve(read_timeout=2.0))  # max_connections: the default 32
    stop = threading.Event()
    with Feeder(lambda _i: stats.frame(10), 0.1):
        opened = hold_requests(port, 32, b"GET / HTTP/1.1\r\nHost: x\r\n", stop)
        wait_until(lambda: opened[0] >= 32, 5)
        time.sleep(0.3)
        ok = 0
        for _ in range(48):
            out = subprocess.run(
                [curl, "-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/health"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            ok += out.stdout == "200"
        stop.set()
    assert ok == 48, f"{ok}/48 HTTP checks answered 200 while 32 requests were held open"
    assert agent_line(port).startswith("up ready 100%")


def test_a_bad_request_target_is_answered_without_a_traceback(
    serve: Callable[..., HealthServer], stats: Stats, caplog: pytest.LogCaptureFixture
) -> None:
    port = port_of(serve())
    stats.frame(10)
    with caplog.at_level("DEBUG"):
        for request in (b"GET //[ HTTP/1.0\r\n\r\n", b"GET http://[::1 HTTP/1.0\r\n\r\n", b"GET //[\n"):
            raw = read_all(port, request)
            assert raw.startswith(b"HTTP/1.0 400 Bad Request\r\n"), raw
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") or r.exc_info]


@pytest.mark.slow
def test_clients_from_other_addresses_cannot_take_a_checks_slot(
    serve: Callable[..., HealthServer], stats: Stats
) -> None:
    port = port_of(serve(max_connections=8, read_timeout=5.0))
    stop = threading.Event()
    with Feeder(lambda _i: stats.frame(10), 0.1):
        # Another machine holds every slot with requests that never complete, and re-opens each one it loses.
        opened = hold_requests(port, 16, b"GE", stop, source="127.0.0.2")
        wait_until(lambda: opened[0] >= 16, 5)
        for _ in range(20):
            assert get(port, "/health")[0] == 200
            assert agent_line(port).startswith("up ready 100%")
        stop.set()


# --- issue 15: what a stranger reads, and credentials nowhere ---------------------------------------------------
def get_from(port: int, path: str, source: str) -> tuple[int, bytes]:
    with socket.socket() as s:
        s.settimeout(3)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


SECRET_URL = "http://admin:hunter2@10.1.2.3:8086/api/v2/write?org=home&token=s3cr3t"


def loaded_stats(stats: Stats) -> None:
    stats.frame(10)
    stats.source("open", "/dev/ttyAMA0", mode="standard")
    stats.update_output("influxdb", state="failing", last_error=f"InfluxDB {SECRET_URL} unreachable: refused")
    stats.update_output("mqtt", state="up", sent=3)
    stats.set_extra("checks", {"public_ip": {"result": "ok", "message": "public address 203.0.113.7"}})
    stats.set_extra("journal", {"directory": "/var/lib/teleinfo/journal", "last_error": None})
    stats.set_meter(METER)


def test_strangers_read_only_what_health_needs_and_no_one_reads_credentials(
    serve: Callable[..., HealthServer], stats: Stats
) -> None:
    port = port_of(serve())
    loaded_stats(stats)
    status, body = get_from(port, "/status", "127.0.0.2")  # another machine
    assert status == 200
    doc = json.loads(body)
    text = body.decode()
    for secret in ("hunter2", "s3cr3t", "admin", "203.0.113.7", "10.1.2.3", METER, "ttyAMA0", "version"):
        assert secret not in text, secret
    assert (
        doc["health"]["state"] == "up" and doc["frames"] == 1 and doc["source"] == {"state": "open", "mode": "standard"}
    )
    assert doc["outputs"] == {"influxdb": {"state": "failing"}, "mqtt": {"state": "up"}}
    assert doc["journal"] == {"state": "ok"} and "checks" not in doc
    # This machine (teleinfo status) reads every counter, credentials redacted all the same.
    status, body = get_from(port, "/status", "127.0.0.1")
    doc = json.loads(body)
    assert doc["checks"]["public_ip"]["result"] == "ok" and "version" in doc
    assert "hunter2" not in body.decode() and "s3cr3t" not in body.decode()
    assert doc["outputs"]["influxdb"]["last_error"].startswith("InfluxDB http://***@10.1.2.3:8086/api/v2/write?")


def test_status_detail_full_and_health(serve: Callable[..., HealthServer], stats: Stats) -> None:
    loaded_stats(stats)
    full = json.loads(get_from(port_of(serve(status_detail="full")), "/status", "127.0.0.2")[1])
    assert "checks" in full and "hunter2" not in json.dumps(full) and METER not in json.dumps(full)
    health = json.loads(get_from(port_of(serve(status_detail="health")), "/status", "127.0.0.1")[1])
    assert "checks" not in health and "version" not in health


def test_credentials_in_urls_never_reach_the_log(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from appliance.logs import setup_logging

    stream = io.StringIO()
    handler = setup_logging("info", logging.StreamHandler(stream))
    try:
        log = logging.getLogger("appliance.test")
        log.warning("InfluxDB %s unreachable", SECRET_URL)
        try:
            raise ConnectionError(f"POST {SECRET_URL} failed")
        except ConnectionError:
            log.exception("output failed")
    finally:
        logging.getLogger().removeHandler(handler)
        del logging.getLogger()._teleinfo_handler  # type: ignore[attr-defined]
    text = stream.getvalue()
    assert "http://***@10.1.2.3:8086" in text and "token=***" in text
    assert "hunter2" not in text and "s3cr3t" not in text


@pytest.mark.slow
def test_teleinfo_status_reads_a_strangers_document(serve: Callable[..., HealthServer], stats: Stats) -> None:
    port = port_of(serve(status_detail="health"))
    loaded_stats(stats)
    out = teleinfo_status(port)
    assert out.returncode == 1 and out.stdout.startswith("TELEINFO WARNING - up ready 50%"), out.stdout
    assert "output     influxdb failing" in out.stdout and "Traceback" not in out.stderr


@given(
    st.dictionaries(
        st.text(max_size=10),
        st.recursive(
            st.none() | st.integers() | st.floats() | st.text(),
            lambda i: st.lists(i, max_size=3) | st.dictionaries(st.text(max_size=5), i, max_size=3),
            max_leaves=8,
        ),
    )
)
@settings(max_examples=200, deadline=None)
def test_teleinfo_status_survives_any_document(doc: dict[str, Any]) -> None:  # fmt: skip
    from appliance.commands import status as status_module

    doc["health"] = doc.get("health") if isinstance(doc.get("health"), dict) else {"state": "up", "line": "\x1b[2J"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = status_module.run_document(doc, "192.0.2.1:9999", as_json=False)
    assert code in (0, 1, 2)
    assert "\x1b" not in out.getvalue()


# --- issue 15: health tells the truth ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("snapshot", "line", "status"),
    [
        (
            replace(snap(0.5, {"mqtt": "stopped", "udp": "up"})),
            "up ready 50% #degraded: mqtt stopped, frames=120 age=0.5s",
            200,
        ),
        (snap(0.5, {"mqtt": "stopped"}), "drain 0% #all outputs stopped: mqtt", 503),
        (
            replace(
                snap(0.5, {"udp": "up"}), sections={"journal": {"last_error": "[Errno 28] No space left on device"}}
            ),
            "up ready 50% #degraded: journal: no space left on device, frames=120 age=0.5s",
            200,
        ),
        (
            replace(snap(0.5), sections={"journal": {"last_error": "[Errno 30] Read-only file system: '/var/x'"}}),
            "up ready 50% #degraded: journal: read-only file system, frames=120 age=0.5s",
            200,
        ),
        (
            replace(snap(0.5, {"a": "failing"}), sections={"journal": {"last_error": "[Errno 28] No space left"}}),
            "drain 0% #all outputs failing: a; journal: no space left",
            503,
        ),
        (replace(snap(0.5), sections={"journal": {"last_error": None}}), "up ready 100% #ok frames=120 age=0.5s", 200),
    ],
)
def test_a_dead_output_or_a_journal_that_cannot_write_is_not_ok(
    snapshot: StatsSnapshot, line: str, status: int
) -> None:
    state = evaluate(snapshot, HealthConfig(down_after=60))
    assert (state.line, state.http_status) == (line, status)


class QuietSource:
    def frame_ok(self, mode: str) -> None:
        pass

    def frame_bad(self) -> None:
        pass


@pytest.mark.slow
def test_garbage_between_stx_and_etx_is_not_a_frame(serve: Callable[..., HealthServer], stats: Stats) -> None:
    from appliance.reader import FrameReader
    from appliance.tic import encode_frame, encode_group

    port = port_of(serve(down_after=1.5))
    reader = FrameReader(QuietSource(), "historique", stats)  # type: ignore[arg-type]
    good = encode_frame([encode_group("historique", "ADCO", METER), encode_group("historique", "PAPP", "00420")])
    assert len(reader.feed(good, time.time())) == 1
    assert agent_line(port).startswith("up ready 100% #ok frames=1 ")
    rng = random.Random(15)
    garbage = b"".join(b"\x02" + rng.randbytes(200).replace(b"\x02", b"").replace(b"\x03", b"") + b"\x03"
                       for _ in range(300))  # fmt: skip
    t0 = time.monotonic()
    handed_out = []
    while time.monotonic() - t0 < 3:  # 60 kB of garbage a second, framed like the meter's frames
        handed_out += reader.feed(garbage, time.time())
        time.sleep(0.1)
    # Nothing in it is data: no empty record reaches the outputs (a lucky group would: it has its checksum).
    assert all(f.values or f.timestamps for f in handed_out) and len(handed_out) < 10, len(handed_out)
    snapshot = stats.snapshot()
    assert snapshot.frames == 1 and snapshot.bad_frames > 1000, snapshot
    line = agent_line(port)
    assert line.startswith("down 0% #no TIC frame for"), line
    assert teleinfo_status(port).returncode == 2


@pytest.mark.root
@pytest.mark.slow
def test_a_journal_on_a_full_disk_makes_health_and_status_degraded(
    serve: Callable[..., HealthServer], stats: Stats, tmp_path: Path
) -> None:
    from appliance.journal import Journal, JournalConfig

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "tiny"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(disk)], capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        (disk / "journal").mkdir()
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as f:  # the disk full to the last byte
            while True:
                f.write(random.randbytes(1024))
                f.flush()
        cfg = JournalConfig(enabled=True, flush_interval=0.2, flush_kb=1)
        journal = Journal(cfg, disk / "journal", "historique", stats)
        journal.start()
        port = port_of(serve())
        with Feeder(lambda i: (stats.frame(10), journal.append(b"\0" * 2000, time.time())), 0.05):
            wait_until(lambda: "journal: no space left on device" in agent_line(port), 10)
            line = agent_line(port)
            assert line.startswith("up ready 50% #degraded: journal: no space left on device"), line
            out = teleinfo_status(port)
            assert out.returncode == 1 and "journal: no space left" in out.stdout.splitlines()[0], out.stdout
            (disk / "filler").unlink()  # room again: the journal writes what it kept, health is ok again
            wait_until(lambda: agent_line(port).startswith("up ready 100% #ok"), 10)
        journal.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/health", "/health"),
        ("/health?verbose=1#x", "/health"),
        ("/status/", "/status/"),
        ("http://teleinfo.local:8080/health", "/health"),
        ("HTTP://[::1]:8080/status?x", "/status"),
        ("http://teleinfo.local", ""),
        ("//teleinfo.local/health", "/health"),
        ("/x://y", "/x://y"),
        ("health", "health"),
        ("//[", None),
        ("http://[::1", None),
        ("http://]::1[/health", None),
    ],
)
def test_the_request_path_of_every_target_form(target: str, path: str | None) -> None:
    from appliance.health.server import request_path

    assert request_path(target) == path
