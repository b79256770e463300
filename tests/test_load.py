"""One load test per listening socket (issue 15, general property 1): while 2,000 hostile connections per socket
(idle, dripping, garbage, reconnecting; :mod:`tests.loadgen`, in a process of its own, from other loopback
addresses) run for 60 s, a legitimate client is served at least 99% of the time, and afterwards the owner's file
descriptors and memory are back to their baseline.

The three sockets are loaded at once, by one harness (:mod:`tests.loadtest`): the health and control sockets of
a real ``teleinfo run --simulate`` (control with a token, as when it is reachable from the network), and a real
``teleinfo sync-server``.  ``TELEINFO_LOAD_SECONDS`` shortens the run while working on it.

The hostile clients come from 127.0.0.2-9 and the legitimate one from 127.0.0.1: other machines, for the servers,
whose pending slots are shared fairly between addresses (``appliance.netserver.SourcePool``).  A flood from the
legitimate client's own address is not what this proves (nothing can tell such clients apart); the issue's
same-address attacks have their own tests (32 held HTTP requests, 16 idle control clients...).  Measured on the
2-core CI machine with the 60 s run: 100% served on each socket (main before issue 15: 72% health, 18% control,
19% sync-server), about 600 hostile connections a second per socket, file descriptors back to their baseline
exactly, RSS within 1 MB of it; about 90 s for the whole file.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.sync.protocol import Connection

from .loadtest import REPO, LoadResult, Target, run_load
from .util import free_port, stop_process, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(400)]

SECONDS = float(os.environ.get("TELEINFO_LOAD_SECONDS", "60"))
CONTROL_TOKEN = "load-test-control-token"
SYNC_TOKEN = "load-test-sync-token-0123456789"
PROBE_TIMEOUT = 3.0  # what a monitor waits (HAProxy's timeout check defaults to 2 s; Nagios to 10 s)
MIN_SERVED_PCT = 99.0
RSS_SLACK_KIB = 8 * 1024


# --- the legitimate clients ------------------------------------------------------------------------------------
def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def health_probe(port: int) -> Target:
    turn = [0]

    def probe() -> bool:
        turn[0] += 1
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as s:
            if turn[0] % 2:  # HAProxy agent-check, nc: silent, one line
                return _read_all(s).startswith(b"up ready 100%")
            s.sendall(b"GET /health HTTP/1.1\r\nHost: appliance\r\nUser-Agent: probe\r\n\r\n")  # curl, httpchk
            return _read_all(s).startswith(b"HTTP/1.0 200 OK\r\n")

    return Target("health", port, 0, probe, drip="GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ")


def control_probe(port: int) -> Target:
    def probe() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as s:
            f = s.makefile("rwb")
            if f.readline() != b"auth required\n":
                return False
            f.write(f"auth {CONTROL_TOKEN}\nstatus\nquit\n".encode())
            f.flush()
            if not f.readline().startswith(b"hello "):
                return False
            doc = json.loads(f.readline())
            return bool(doc["role"] in ("principal", "secondaire") and doc["health"]["state"] == "up")

    return Target("control", port, 0, probe, drip="auth ", guess="auth wrong-guess-{n}\n")


def sync_probe(port: int) -> Target:
    def probe() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as s:
            conn = Connection(s)
            conn.send({"op": "hello", "v": 1, "name": "probe", "token": SYNC_TOKEN})
            if conn.recv().get("ok") is not True:
                return False
            conn.send({"op": "ping"})
            ok = conn.recv() == {"ok": True}
            conn.send({"op": "bye"})
            return ok

    hello = '{"op":"hello","v":1,"name":"probe","token":"'
    return Target("sync-server", port, 0, probe, drip=hello, guess=hello + 'wrong-{n}-0123456789"}\n')


# --- the servers -----------------------------------------------------------------------------------------------
def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "appliance", *argv], cwd=REPO, env=env, stdout=out, stderr=out)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LoadResult]]:
    tmp = tmp_path_factory.mktemp("load")
    health, control, sync = free_port(), free_port(), free_port()
    (tmp / "teleinfo.toml").write_text(
        f'[health]\nport = {health}\n[control]\nport = {control}\ntoken = "{CONTROL_TOKEN}"\n'
        "[outputs.multicast]\nenabled = false\n",
        encoding="utf-8",
    )
    (tmp / "tokens").write_text(f"probe {SYNC_TOKEN}\n", encoding="utf-8")
    service = start(["run", "--simulate", "--config", str(tmp / "teleinfo.toml")], tmp / "service.log")
    server = start(
        ["sync-server", "--config", str(tmp / "teleinfo.toml"), "--port", str(sync), "--root", str(tmp / "srv"),
         "--tokens", str(tmp / "tokens")],
        tmp / "sync-server.log",
    )  # fmt: skip
    try:
        targets = [health_probe(health), control_probe(control), sync_probe(sync)]
        for t, proc in zip(targets, (service, service, server), strict=True):
            t.pid = proc.pid
            wait_until(lambda t=t: listening(t.port), 20)
        wait_until(targets[0].probe, 20)  # frames flow: up
        warm = [Target(t.name, t.port, t.pid, t.probe, t.drip, t.guess, clients=300) for t in targets]
        run_load(warm, 6, settle=15)  # first-use allocations and imports are not a leak
        results = run_load(targets, SECONDS)
        for r in results.values():
            print(r.report())
        yield results
    finally:
        stop_process(service)
        stop_process(server)
    for name in ("service.log", "sync-server.log"):
        log = (tmp / name).read_text(errors="replace")
        assert "Traceback" not in log, f"{name}:\n{log[-3000:]}"


def check(result: LoadResult) -> None:
    assert result.served_pct >= MIN_SERVED_PCT, result.report() + f"; failed probes took {result.slow[:20]} s"
    assert result.hostile.get("opened", 0) > 2000, result.report()  # the load really ran
    assert result.fds_after <= result.fds_before, result.report()
    assert result.rss_after <= result.rss_before + RSS_SLACK_KIB, result.report()


def test_health_socket_serves_checks_under_load(loaded: dict[str, LoadResult]) -> None:
    check(loaded["health"])


def test_control_socket_serves_the_operator_under_load(loaded: dict[str, LoadResult]) -> None:
    check(loaded["control"])


def test_sync_server_serves_its_clients_under_load(loaded: dict[str, LoadResult]) -> None:
    check(loaded["sync-server"])


def test_load_wall_time_is_reported(loaded: dict[str, LoadResult]) -> None:
    """The three sockets are loaded together: one run's time, not three (the figures: pytest -s)."""
    wall = max(r.wall_s for r in loaded.values())
    assert wall < SECONDS + 60, f"the three load tests took {wall:.0f} s together"
