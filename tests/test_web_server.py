"""The live page's HTTP server (appliance/web/server.py) against hostile and broken clients, over real sockets on
127.0.0.1: routes and methods, the whole-request deadline and byte bound, the bounds on clients and event-stream
subscribers, a subscriber that stops reading, the pings, nothing personal and nothing echoed, no traceback."""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import appliance.web.server as server_module
from appliance.config import parse_config
from appliance.health.config import HealthConfig
from appliance.schema import Config
from appliance.service import simulated
from appliance.simulator import PARIS
from appliance.stats import Stats
from appliance.tariff import parse_tariff
from appliance.tariff.feed import TariffFeed
from appliance.tic import Decoder
from appliance.web.config import WebConfig
from appliance.web.feed import LiveFeed
from appliance.web.server import SUBSCRIBER_BUFFER, WebServer, parse_request

from .meterframes import METER, historique_frame
from .test_service import Proc, clean_env
from .util import free_port, wait_until


class Page:
    """A WebServer on 127.0.0.1 (a free port), its feed and its stats, as the service wires them."""

    def __init__(self, **web: Any) -> None:
        self.stats = Stats()
        self.tariff = TariffFeed(parse_tariff({}), None, lambda r: None, stats=self.stats)
        self.tariff.gate.require_sync = False
        self.tariff.gate._synced = True
        self.feed = LiveFeed(PARIS, self.tariff)
        cfg = WebConfig(bind="127.0.0.1", port=0, **web)
        self.server = WebServer(cfg, self.feed, self.stats, HealthConfig())
        self.server.start()
        assert self.server.address is not None
        self.port = self.server.address[1]
        self.decoder = Decoder("historique")
        self.base = 10_000

    def frame(self, papp: int = 1000, at: float | None = None) -> None:
        self.base += 3
        data = historique_frame({"BASE": self.base}, papp)
        (frame,) = self.decoder.feed(data, time.time() if at is None else at)
        self.stats.frame(len(frame.values))
        self.stats.set_meter(METER)
        self.tariff.on_frame(frame)
        self.feed.on_frame(frame)

    def connect(self, rcvbuf: int | None = None) -> socket.socket:
        s = socket.socket()
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(5)
        s.connect(("127.0.0.1", self.port))
        return s

    def raw(self, request: bytes) -> bytes:
        """Send ``request``, read the whole answer (the server closes)."""
        with self.connect() as s:
            s.sendall(request)
            return read_all(s)

    def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        return split(self.raw(f"{method} {path} HTTP/1.1\r\nHost: teleinfo.local\r\n\r\n".encode()))

    def section(self) -> dict[str, Any]:
        return dict(self.stats.snapshot().sections["web"])

    def close(self) -> None:
        self.server.stop(2)


def read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


@pytest.fixture
def page(caplog: pytest.LogCaptureFixture) -> Iterator[Page]:
    p = Page(max_clients=6, max_subscribers=2, request_timeout=1.0, max_request_bytes=2048)
    try:
        yield p
    finally:
        p.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]  # nothing a client sends costs a traceback


class Stream:
    """An event-stream subscriber reading in the test's thread."""

    def __init__(self, page: Page, rcvbuf: int | None = None) -> None:
        self.sock = page.connect(rcvbuf)
        self.sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        self.buf = b""

    def read_until(self, marker: bytes, timeout: float = 5.0) -> bytes:
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while marker not in self.buf and time.monotonic() < deadline:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        assert marker in self.buf, self.buf[-500:]
        head, _, self.buf = self.buf.partition(marker)
        return head + marker

    def events(self, name: str, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        out = []
        while len(out) < n:
            block = self.read_until(b"\n\n", timeout)
            if block.startswith(f"event: {name}\n".encode()):
                out.append(json.loads(block.split(b"data: ", 1)[1]))
        return out

    def close(self) -> None:
        self.sock.close()


# --- configuration ---------------------------------------------------------------------------------------------


def test_the_web_section_defaults_and_the_demo() -> None:
    cfg = parse_config("")
    assert (cfg.web.enabled, cfg.web.port) == (True, 8080)
    assert cfg.web.bind == cfg.health.bind == "0.0.0.0"  # bound like the health socket
    assert simulated(cfg).web.bind == "127.0.0.1"  # the demo listens on loopback only, like every demo socket
    assert parse_config('[web]\nbind = "127.0.0.1"\nport = 8081\n').web == WebConfig(bind="127.0.0.1", port=8081)
    with pytest.raises(Exception) as e:
        parse_config('[web]\nbind = "lan"\nport = 0\nmax_clients = 4\nmax_subscribers = 4\nrequest_timeout = nan\n')
    assert getattr(e.value, "errors", None) == [
        "web.bind: not an IP address: 'lan' (0.0.0.0: every IPv4 interface, 127.0.0.1: this machine only)",
        "web.port: must be at least 1 (got 0)",
        "web.request_timeout: must be a finite number (got nan)",
        "web.max_subscribers: must be under max_clients (4): a page needs a request too",
    ]
    assert replace(Config(), web=WebConfig(enabled=False)).web.enabled is False


def test_request_parsing() -> None:
    assert parse_request(b"HEAD /static/app.js HTTP/1.0\n\n") == ("HEAD", "/static/app.js")
    assert parse_request(b"GET /#frag HTTP/1.1\r\n\r\n") == ("GET", "/")
    for bad in (
        b"hello\r\n\r\n",
        b"GET index.html HTTP/1.1\r\n\r\n",  # not the origin form
        b"GET http://evil/ HTTP/1.1\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET /\x1b[2J HTTP/1.1\r\n\r\n",  # a terminal escape in the target
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
    ):
        with pytest.raises(server_module.BadRequest):
            parse_request(bad)


# --- routes ----------------------------------------------------------------------------------------------------


def test_the_page_its_files_and_its_snapshot(page: Page) -> None:
    status, headers, body = page.get("/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8" and b"static/app.js" in body
    assert int(headers["content-length"]) == len(body) and headers["connection"] == "close"
    assert "default-src 'self'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
    assert page.get("/index.html")[2] == body
    status, headers, js = page.get("/static/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and b"EventSource" in js
    status, headers, nothing = page.get("/static/app.css", "HEAD")
    assert status == 200 and nothing == b"" and int(headers["content-length"]) > 1000

    status, headers, body = page.get("/api/snapshot")
    snap = json.loads(body)
    assert status == 200 and headers["cache-control"] == "no-store" and headers["content-type"] == "application/json"
    assert snap["frame"] is None and snap["history"]["points"] == []  # no frame yet: the page says so
    for _ in range(3):
        page.frame(1234)
    snap = json.loads(page.get("/api/snapshot?t=1")[2])
    assert snap["frame"]["power_va"] == 1234 and snap["frame"]["age_s"] < 5
    assert snap["tariff"]["contract"] == "BASE" and snap["status"]["health"]["state"] == "up"
    assert METER not in json.dumps(snap)  # no meter address, no PRM, in any payload


def test_wrong_paths_and_methods_answer_without_echo(page: Page) -> None:
    for path in ("/nope", "/static/../appliance/__init__.py", "/static/%2e%2e/x", "/static/", "/favicon.ico", "/api"):
        status, _, body = page.get(path)
        assert status == 404 and body == b"not found\n"
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"):
        status, headers, body = page.get("/api/snapshot", method)
        assert status == 405 and headers["allow"] == "GET, HEAD" and b"snapshot" not in body
    for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"GET /<script> HTTP/9\r\n\r\n"):
        status, _, body = split(page.raw(garbage))
        assert status == 400 and body == b"bad request\n"
    want = {"404": 6, "405": 7, "400": 2}
    wait_until(lambda: page.section()["responses"] == want, 5)  # /status (the health socket's) has them too


def test_the_whole_request_has_a_deadline_and_a_byte_bound(page: Page) -> None:
    with page.connect() as s:  # slowloris: a byte every 0.3 s never makes a request; 1 s in all, then 408
        start = time.monotonic()
        got = b""
        for c in b"GET / HTTP/1.1\r\nHost: x\r\n":
            try:
                s.send(bytes([c]))
            except OSError:
                break
            time.sleep(0.3)
            if time.monotonic() - start > 3:
                break
        got = read_all(s)
        assert split(got)[0] == 408 and time.monotonic() - start < 2.5
    with page.connect() as s:  # 2 kB in all, whatever the reads
        try:
            s.sendall(b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 3000 + b"\r\n")
        except OSError:
            pass
        assert split(read_all(s))[0] == 431
    assert page.server.counters["timeouts"] == 1 and page.server.counters["too_large"] == 1


def test_clients_beyond_the_bound_get_503(page: Page) -> None:
    idle = [page.connect() for _ in range(6)]  # six clients that say nothing (yet)
    try:
        wait_until(lambda: page.server.client_count == 6, 5)
        with page.connect() as s:  # answered at once, before any request: one sent meanwhile may meet a reset
            status, headers, _ = split(read_all(s))
        assert status == 503 and headers["retry-after"] == "5"
    finally:
        for s in idle:
            s.close()
    wait_until(lambda: page.server.client_count == 0, 5)
    assert page.get("/")[0] == 200 and page.server.counters["refused"] == 1


# --- the event stream ------------------------------------------------------------------------------------------


def test_every_frame_is_an_event_and_quiet_streams_are_pinged(page: Page, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "PING_S", 0.3)
    stream = Stream(page)
    try:
        head = stream.read_until(b"retry: 2000\n\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Type: text/event-stream" in head
        wait_until(lambda: len(page.server._subscribers) == 1, 5)
        for papp in (100, 2300, 4560):
            start = time.monotonic()
            page.frame(papp)
            (event,) = stream.events("frame", 1)
            assert event["power_va"] == papp and time.monotonic() - start < 0.5
            assert METER not in json.dumps(event)
        assert stream.read_until(b": ping\n\n", 2)
        status = stream.events("status", 1, 15)[0]
        assert status["health"]["state"] == "up" and status["version"]
    finally:
        stream.close()
    wait_until(lambda: page.section()["subscribers"] == 0, 5)


def test_streams_beyond_the_bound_get_503(page: Page) -> None:
    a, b = Stream(page), Stream(page)
    try:
        for s in (a, b):
            s.read_until(b"retry:")
        status, headers, _ = page.get("/api/events")
        assert status == 503 and headers["retry-after"] == "5"
        a.close()
        wait_until(lambda: len(page.server._subscribers) == 1, 5)
        c = Stream(page)
        c.read_until(b"retry:")
        c.close()
    finally:
        a.close()
        b.close()
    status, headers, body = page.get("/api/events", "HEAD")
    assert status == 200 and headers["content-type"].startswith("text/event-stream") and body == b""


def test_a_subscriber_that_stops_reading_is_dropped_and_the_others_go_on(page: Page) -> None:
    reader = Stream(page)
    stuck = Stream(page, rcvbuf=4096)  # subscribes, then never reads again
    try:
        reader.read_until(b"retry:")
        wait_until(lambda: len(page.server._subscribers) == 2, 5)
        big = [server_module.sse_event("frame", {"power_va": 1, "pad": "x" * 60_000})]
        sent = 0
        while page.server.counters["subscribers_dropped"] == 0 and sent < 400:
            page.feed._push(big)  # the reader's side, as on_frame does, with big events
            sent += 1
            reader.events("frame", 1)
            time.sleep(0.002)
        assert page.server.counters["subscribers_dropped"] == 1 and sent * 60_000 > SUBSCRIBER_BUFFER
        wait_until(lambda: page.section()["subscribers"] == 1 and page.section()["subscribers_dropped"] == 1, 5)
        page.frame(777)
        assert reader.events("frame", 1)[0]["power_va"] == 777  # the reading one never noticed
    finally:
        reader.close()
        stuck.close()


def test_nothing_on_the_page_changes_the_appliance(page: Page) -> None:
    """Read-only: every request of every method leaves the counters, the ledger and the feed as they were."""
    page.frame(500)
    before = (page.tariff.engine.to_state(), page.tariff.counted, page.stats.frames)
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE"):
        for path in ("/", "/api/snapshot", "/api/events", "/static/app.js", "/reload", "/api/config"):
            with page.connect() as s:
                s.sendall(f"{method} {path} HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello".encode())
                s.settimeout(1)
                try:
                    s.recv(100)
                except TimeoutError:
                    pass
    assert (page.tariff.engine.to_state(), page.tariff.counted, page.stats.frames) == before


# --- in the service ------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_the_service_serves_the_page_and_a_reload_moves_it(tmp_path: Path) -> None:
    """``teleinfo run --simulate``: the page on loopback at the configured port, its address in the log; SIGHUP with
    another port moves it there and keeps the power history (it lives in the service, not in the server)."""
    first, second = free_port(), free_port()
    config = tmp_path / "teleinfo.toml"
    base = "[outputs.multicast]\nenabled = false\n[health]\nenabled = false\n[control]\nenabled = false\n"
    config.write_text(base + f"[web]\nport = {first}\n")
    argv = [sys.executable, "-m", "appliance", "run", "--simulate", "--config", str(config), "--no-view"]
    svc = Proc(argv, clean_env())
    try:
        svc.wait_log(f"live page on http://127.0.0.1:{first}/")

        def snapshot(port: int) -> dict[str, Any]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/snapshot", timeout=5) as r:
                return dict(json.load(r))

        wait_until(lambda: snapshot(first)["frame"] is not None and snapshot(first)["history"]["points"], 15)
        before = snapshot(first)["history"]["points"]
        assert snapshot(first)["status"]["tariff"] == {"state": "counting"}  # the simulator is its own clock
        config.write_text(base + f"[web]\nport = {second}\n")
        svc.send(signal.SIGHUP)
        svc.wait_log("configuration reloaded")
        svc.wait_log(f"live page on http://127.0.0.1:{second}/")
        after = snapshot(second)["history"]["points"]
        assert after[0] == before[0] or after[0][0] == before[0][0]  # the same history, its first minute kept
        with pytest.raises(OSError):
            snapshot(first)
        assert svc.stop() == 0
    finally:
        svc.kill()
    assert not svc.lines("Traceback") and not svc.lines("ERROR"), svc.log()
