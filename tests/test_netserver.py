"""appliance.netserver: the bounds every listening socket gets from the shared selector loop, on a tiny line
protocol (admitted after a "hello" line, then echoes): the whole-request deadline and byte bound count every read
together, idle admitted clients are closed, pending and total clients are bounded, a bug costs one connection."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from appliance.netserver import Connection, Limits, SelectorServer


class Echo(SelectorServer[Connection]):
    def new_connection(self, sock: socket.socket, peer: str, now: float) -> Connection:
        return Connection(sock, peer, now)

    def refusal(self) -> bytes:
        return b"busy\n"

    def on_expire(self, conn: Connection, now: float) -> None:
        self.finish(conn, b"too slow\n")

    def on_too_large(self, conn: Connection) -> None:
        self.finish(conn, b"too large\n")

    def on_data(self, conn: Connection, eof: bool) -> None:
        while b"\n" in conn.inbuf:
            line, _, rest = bytes(conn.inbuf).partition(b"\n")
            conn.inbuf[:] = rest
            if line == b"boom":
                raise RuntimeError("a bug in the protocol")
            if not conn.admitted:
                if line == b"hello":
                    self.admit(conn)
                    self.send(conn, b"welcome\n")
                continue
            self.send(conn, line + b"\n")


LIMITS = Limits(max_clients=4, request_timeout=0.6, max_request_bytes=100, max_pending=2, idle_timeout=0.8)


@pytest.fixture
def port() -> Iterator[int]:
    server = Echo("echo", "127.0.0.1", 0, LIMITS)
    server.start()
    assert server.address is not None
    yield server.address[1]
    assert server.stop(1.0)


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    return s


def read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(4096):
        out += chunk
    return out


def test_the_request_deadline_is_for_the_whole_request_not_each_read(port: int) -> None:
    s = connect(port)
    t0 = time.monotonic()
    for _ in range(4):  # a byte every 0.25 s: no read ever waits long, the request still ends at 0.6 s
        s.sendall(b"h")
        time.sleep(0.25)
    assert read_all(s) == b"too slow\n"
    assert 0.5 < time.monotonic() - t0 < 1.6
    s.close()


def test_the_byte_bound_counts_every_read(port: int) -> None:
    s = connect(port)
    for _ in range(11):  # ten bytes at a time, no read over the bound, 110 bytes in all
        s.sendall(b"x" * 9 + b"\n")
        time.sleep(0.01)
    assert read_all(s) == b"too large\n"
    s.close()


def test_admitted_clients_echo_until_idle(port: int) -> None:
    s = connect(port)
    s.sendall(b"hello\nping\n")
    assert s.recv(100) in (b"welcome\nping\n", b"welcome\n")
    time.sleep(0.7)  # past the request deadline: admitted clients have none
    s.sendall(b"again\n")
    assert b"again" in s.recv(100)
    t0 = time.monotonic()
    assert read_all(s) == b""  # closed once idle
    assert 0.6 < time.monotonic() - t0 < 1.5
    s.close()


def test_pending_and_total_clients_are_bounded(port: int) -> None:
    pending = [connect(port) for _ in range(2)]
    time.sleep(0.1)
    extra = connect(port)
    assert read_all(extra) == b"busy\n"  # a third client not yet admitted: refused at once
    extra.close()
    for s in pending:
        s.sendall(b"hello\n")
        assert s.recv(100) == b"welcome\n"
    more = [connect(port) for _ in range(2)]
    time.sleep(0.1)
    over = connect(port)
    assert read_all(over) == b"busy\n"  # max_clients
    for s in pending + more + [over]:
        s.close()


def test_a_bug_costs_one_connection(port: int) -> None:
    bad, good = connect(port), connect(port)
    bad.sendall(b"boom\n")
    assert read_all(bad) == b""
    good.sendall(b"hello\nstill here\n")
    assert good.recv(100).startswith(b"welcome\n")
    bad.close()
    good.close()
