"""Issue 15 on ``teleinfo sync-server`` and ``teleinfo sync``: what a handful of hostile connections, a hostile
client's strings and a hostile server's replies did, each reproduced first; every connection on 127.0.0.1 (or
another loopback address, which the server sees as another machine).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import appliance.sync.server as server_module
from appliance.sync.client import SyncClient
from appliance.sync.config import SyncServerConfig
from appliance.sync.protocol import Connection, ProtocolError
from appliance.sync.server import SyncServer

from .syncraw import Raw
from .util import wait_until

TOKEN = "tok-{}-0123456789abcdef"


def tokens_file(path: Path, names: list[str]) -> Path:
    path.write_text("".join(f"{n} {TOKEN.format(n)}\n" for n in names), encoding="utf-8")
    return path


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., SyncServer]]:
    servers: list[SyncServer] = []

    def make(**changes: Any) -> SyncServer:
        tokens_file(tmp_path / "tokens", ["alice", "bob"])
        cfg = SyncServerConfig(
            **{"port": 0, "root": str(tmp_path / "srv"), "tokens_file": str(tmp_path / "tokens"), **changes}
        )
        server = SyncServer(cfg)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, bad


@pytest.mark.slow
# --- the hello deadline, pending slots, busy ------------------------------------------------------------------
@pytest.mark.integration
def test_the_hello_deadline_is_for_the_whole_exchange(
    make_server: Callable[..., SyncServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "HELLO_TIMEOUT", 1.0)
    server = make_server()
    dripper = Raw(server.port)
    t0 = time.monotonic()
    closed_after = None
    for byte in b'{"op":"hello","v":1,"name":"alice","token":"' * 3:  # a byte every 0.3 s: no read waits long
        try:
            dripper.sock.sendall(bytes([byte]))
        except OSError:
            closed_after = time.monotonic() - t0
            break
        time.sleep(0.3)
        dripper.sock.setblocking(False)
        try:
            if dripper.sock.recv(100) == b"":
                closed_after = time.monotonic() - t0
                break
        except BlockingIOError:
            pass
        finally:
            dripper.sock.setblocking(True)
    assert closed_after is not None and closed_after < 1.0 + 0.25 + 0.7, closed_after


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(60)
def test_drippers_from_another_address_cannot_keep_a_client_out(make_server: Callable[..., SyncServer]) -> None:
    server = make_server(max_connections=8, max_pending=4)
    stop = threading.Event()

    def dripper() -> None:  # holds a pending slot as long as it can, re-opens it as soon as it loses it
        while not stop.is_set():
            try:
                r = Raw(server.port, "127.0.0.2", timeout=0.5)
                while not stop.is_set():
                    r.sock.sendall(b" ")
                    try:
                        if r.sock.recv(100) == b"":
                            break
                    except TimeoutError:
                        continue
            except OSError:
                time.sleep(0.02)

    threads = [threading.Thread(target=dripper, daemon=True) for _ in range(12)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        for _ in range(10):
            alice = Raw(server.port)
            assert alice.hello("alice", TOKEN.format("alice"))["ok"] is True
            assert alice.ask({"op": "ping"}) == {"ok": True}
            alice.sock.close()
    finally:
        stop.set()
        for t in threads:
            t.join(3)


@pytest.mark.integration
def test_server_busy_is_not_an_authentication_refusal(
    make_server: Callable[..., SyncServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(max_connections=1)
    held = Raw(server.port)
    assert held.hello("bob", TOKEN.format("bob"))["ok"] is True
    caplog.set_level(logging.INFO, "appliance.sync")
    client = SyncClient(tmp_path / "d", "127.0.0.1", server.port, "alice", TOKEN.format("alice"))
    assert client.run(once=True) == 1  # retry later (1), not "bad credentials" (2)
    text = "\n".join(caplog.messages)
    assert "server busy" in text and "authentication refused" not in text and "refused alice" not in text
    held.sock.close()
    wait_until(lambda: client.run(once=True) == 0, 10)


# --- a hostile client's strings ----------------------------------------------------------------------------------
@pytest.mark.integration
def test_lone_surrogates_float_offsets_and_bad_nesting_get_an_error_not_a_crash(
    make_server: Callable[..., SyncServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "appliance.sync")
    server = make_server()
    # A lone surrogate in a token: refused like any wrong token.
    assert Raw(server.port).hello("alice", "\ud800" + TOKEN.format("alice")) == {
        "ok": False,
        "error": "authentication refused",
    }
    for attack in (
        {"op": "put", "path": "\udc80", "size": 1},  # would have become the file name b"\x80"
        {"op": "put", "path": "a/\ud800b", "size": 1},
        {"op": "mkdir", "path": "\udcff\udcfe"},
        {"op": "rename", "src": "x", "dst": "\udc80"},
        {"op": "delete", "path": "\ud83d"},
    ):
        r = Raw(server.port)
        assert r.hello("alice", TOKEN.format("alice"))["ok"] is True
        reply = r.ask(attack)
        assert reply["ok"] is False and "not valid Unicode" in reply["error"], (attack, reply)
        assert r.closed()
    r = Raw(server.port)
    assert r.hello("alice", TOKEN.format("alice"))["ok"] is True
    assert r.ask({"op": "put", "path": "f", "size": 3})["ok"] is True
    r.conn.send({"op": "data", "offset": 0.0})  # a float offset: the server's thread used to crash on it
    reply = r.conn.recv()
    assert reply["ok"] is False and "offset" in reply["error"] and r.closed()
    r = Raw(server.port)
    r.sock.sendall(b"[" * 3000 + b"\n")  # nested too deep for json: a protocol error
    assert r.conn.recv()["ok"] is False and r.closed()
    # Every file name on disk is UTF-8; the server still serves; nothing was a traceback.
    for _top, dirs, files in os.walk(tmp_path / "srv"):
        for name in dirs + files:
            name.encode("utf-8")
    ok = Raw(server.port)
    assert ok.hello("bob", TOKEN.format("bob"))["ok"] is True and ok.ask({"op": "ping"}) == {"ok": True}
    no_tracebacks(caplog)


def test_a_bad_port_is_a_clear_error(tmp_path: Path) -> None:
    for port in ("-1", "65536", "x"):
        r = subprocess.run(
            [sys.executable, "-m", "appliance", "sync-server", "--port", port, "--root", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert r.returncode == 2 and "--port" in r.stderr and "Traceback" not in r.stderr, r.stderr


# --- a hostile server's replies ----------------------------------------------------------------------------------
class FakeServer:
    """Answers the hello, then each request with the next scripted reply (a dict, or raw bytes sent as is)."""

    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(5)
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        with sock:
            sock.settimeout(5)
            conn = Connection(sock)
            try:
                for reply in self.replies:
                    if not isinstance(reply, bytes) or not reply.startswith((b"{", b"[")):  # not a payload
                        conn.recv()
                    sock.sendall(reply if isinstance(reply, bytes) else json.dumps(reply).encode() + b"\n")
            except (OSError, ProtocolError, ConnectionError):
                pass

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


HELLO_OK = {"ok": True, "v": 1, "max_file": 10**6}


def run_client(tmp: Path, replies: list[Any]) -> int:
    (tmp / "d").mkdir(exist_ok=True)
    (tmp / "d" / "file").write_bytes(b"data")
    fake = FakeServer(replies)
    try:
        client = SyncClient(tmp / "d", "127.0.0.1", fake.port, "alice", "t" * 20)
        return client.run(once=True)
    finally:
        fake.close()


@pytest.mark.parametrize(
    "replies",
    [
        [{"ok": True, "max_file": "x"}],
        [{"ok": True, "max_file": None}],
        [HELLO_OK, {"ok": True, "size": 2}, b"[]"],
        [HELLO_OK, {"ok": True, "size": 22}, b'{"files":[],"dirs":[]}'],
        [HELLO_OK, {"ok": True, "size": 38}, b'{"files":{"a":[1]},"dirs":[null, 1.5]}'],
        [HELLO_OK, {"ok": True, "size": 32}, b'{"files":{"a":"x"},"dirs":"abc"}'],
        [HELLO_OK, {"ok": True, "size": 22}, b'{"files":{},"dirs":[]}', {"ok": True, "offset": None}],
        [HELLO_OK, {"ok": True, "size": 22}, b'{"files":{},"dirs":[]}', {"ok": True, "offset": "12"}],
        [HELLO_OK, {"ok": True, "size": -5}],
        [HELLO_OK, {"ok": True, "size": 1.5}],
        [b"[" * 3000 + b"\n"],
        [{"ok": False, "error": "\x1b[2J\x1b]0;owned\x07"}],
    ],
)
def test_malformed_server_replies_never_crash_the_client(
    tmp_path: Path, replies: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "appliance.sync")
    assert run_client(tmp_path, replies) == 1
    assert not any("\x1b" in m for m in caplog.messages)


def test_a_huge_declared_listing_is_refused_before_it_is_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "appliance.sync")
    t0 = time.monotonic()
    assert run_client(tmp_path, [HELLO_OK, {"ok": True, "size": 2 * 10**9}]) == 1
    assert time.monotonic() - t0 < 3
    assert any("declared a listing of 2000000000 bytes" in m for m in caplog.messages)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    hello=st.dictionaries(st.sampled_from(["ok", "v", "max_file", "error"]), json_values, max_size=4),
    listing=st.dictionaries(st.sampled_from(["files", "dirs", "x"]), json_values, max_size=3),
    put=st.dictionaries(st.sampled_from(["ok", "offset", "sha256", "error"]), json_values, max_size=4),
)
def test_any_server_reply_is_survived(
    tmp_path: Path, hello: dict[str, Any], listing: dict[str, Any], put: dict[str, Any]
) -> None:
    payload = json.dumps(listing).encode()
    replies = [{**hello, "ok": True}, {"ok": True, "size": len(payload)}, payload, put, {"ok": True}, {"ok": True}]
    assert run_client(tmp_path, replies) in (0, 1)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(60)
def test_drippers_from_the_clients_own_address_give_their_slots(make_server: Callable[..., SyncServer]) -> None:
    """Drippers re-opened every 10 s from the client's own machine (fairness between addresses cannot help): a
    connection that has not logged in after a second gives its slot to a newcomer."""
    server = make_server(max_connections=8, max_pending=4)
    stop = threading.Event()

    def dripper() -> None:
        while not stop.is_set():
            opened = time.monotonic()
            try:
                r = Raw(server.port, timeout=0.5)
                while not stop.is_set():
                    r.sock.sendall(b" ")
                    try:
                        if r.sock.recv(100) == b"":
                            break
                    except TimeoutError:
                        continue
            except OSError:
                pass
            stop.wait(max(0.05, opened + 10 - time.monotonic()))

    threads = [threading.Thread(target=dripper, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        for _ in range(5):
            alice = Raw(server.port)
            assert alice.hello("alice", TOKEN.format("alice"))["ok"] is True
            assert alice.ask({"op": "ping"}) == {"ok": True}
            alice.sock.close()
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(3)
