"""Issue 15, general property 2, on the outputs: what a broken or hostile server answers them is survived, read in
bounded memory, and never printed raw.  The servers here are played by sockets on 127.0.0.1 (a real server never
answers like this on demand): an InfluxDB that answers a write with 200 MB of terminal escapes, with a gzip bomb,
or with garbage; an MQTT "broker" that answers CONNECT with random bytes.
"""

from __future__ import annotations

import gzip
import http.server
import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.errors import error_reason
from appliance.outputs.base import Rejected
from appliance.outputs.influxdb.config import InfluxConfig
from appliance.outputs.influxdb.output import InfluxError, InfluxOutput
from appliance.outputs.mqtt.config import MqttConfig
from appliance.outputs.mqtt.output import MqttError, MqttOutput
from appliance.tic import Frame

from .probes import rss_kib
from .util import free_port

ESCAPES = b"\x1b[2J\x1b]0;owned\x07\xc2\x9b31m"
BIG = 200 * 1024 * 1024


class Hostile(http.server.BaseHTTPRequestHandler):
    mode = "huge"

    def log_message(self, *_args: Any) -> None:
        pass

    def do_GET(self) -> None:  # /ping
        self.send_response(204)
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.mode == "gzip":
            body = gzip.compress(b"\x1b" * BIG, 1)
            self.send_response(500)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        status = 400 if self.mode == "huge" else 503
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(BIG))
        self.end_headers()
        chunk = ESCAPES * (65536 // len(ESCAPES))
        try:
            for _ in range(BIG // len(chunk)):
                self.wfile.write(chunk)
        except OSError:  # the client stopped reading: what we want
            pass


@pytest.fixture
def hostile_influx() -> Iterator[tuple[str, type[Hostile]]]:
    handler = type("H", (Hostile,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def frame() -> Frame:
    return Frame("historique", {"ADCO": "012345678901", "PAPP": 420}, received_at=1_700_000_000.0)


@pytest.mark.parametrize("mode", ["huge", "retry", "gzip"])
def test_an_influxdb_reply_is_read_in_bounded_memory_and_shown_safely(
    hostile_influx: tuple[str, type[Hostile]], mode: str
) -> None:
    url, handler = hostile_influx
    handler.mode = mode
    out = InfluxOutput(InfluxConfig(enabled=True, url=url, timeout=10.0))
    out.open()
    before = rss_kib()
    t0 = time.monotonic()
    with pytest.raises((Rejected, InfluxError)) as e:
        out.send(frame())
    elapsed = time.monotonic() - t0
    grew = rss_kib() - before
    out.close()
    reason = error_reason(e.value)
    assert "\x1b" not in reason and "\x9b" not in reason and len(reason) < 300, reason
    assert grew < 20_000, f"RSS grew by {grew} KiB reading a {BIG}-byte reply"
    assert elapsed < 5  # (log lines: test_log_lines_never_carry_a_peers_escapes)


@pytest.mark.slow
def test_a_broker_answering_garbage_is_an_error_not_a_crash() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def broker() -> None:
        rng = random.Random(15)
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    conn.recv(4096)  # CONNECT
                    conn.sendall(rng.choice([b"\x20\x02\x00\x00" + rng.randbytes(100), rng.randbytes(3000),
                                             b"\x20\xff\xff\xff\x7f", ESCAPES]))  # fmt: skip
                    time.sleep(0.3)
                except OSError:
                    pass

    thread = threading.Thread(target=broker, daemon=True)
    thread.start()
    try:
        errors = 0
        for _ in range(8):
            out = MqttOutput(MqttConfig(enabled=True, host="127.0.0.1", port=port, client_id="t"), timeout=2.0)
            t0 = time.monotonic()
            try:
                out.open()  # a well-formed CONNACK among the garbage connects: fine too
            except (MqttError, OSError) as e:  # a clear error, nothing else
                errors += 1
                assert "\x1b" not in error_reason(e)
            finally:
                out.close()
            assert time.monotonic() - t0 < 5
        assert errors >= 4
    finally:
        stop.set()
        thread.join(3)
        listener.close()
    assert free_port()  # the test process is still fine


def test_log_lines_never_carry_a_peers_escapes(caplog: pytest.LogCaptureFixture) -> None:
    import io

    from appliance.logs import setup_logging

    stream = io.StringIO()
    handler = setup_logging("info", logging.StreamHandler(stream))
    try:
        logging.getLogger("appliance.test").warning("server said %s", ESCAPES.decode("utf-8", "replace"))
    finally:
        logging.getLogger().removeHandler(handler)
        del logging.getLogger()._teleinfo_handler  # type: ignore[attr-defined]
    assert "\x1b" not in stream.getvalue() and "\\x1b[2J" in stream.getvalue()
