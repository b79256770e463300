"""appliance.netserver: the bounds every listening socket gets from the shared selector loop, on a tiny line
protocol (admitted after a "hello" line, then echoes): the whole-request deadline and byte bound count every read
together, idle admitted clients are closed, pending and total clients are bounded, a bug costs one connection."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from appliance.netserver import Connection, Limits, SelectorServer, Throttle


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
        answers = b""  # the answers to one read go out together (one segment: a reader sees them at once)
        while b"\n" in conn.inbuf:
            line, _, rest = bytes(conn.inbuf).partition(b"\n")
            conn.inbuf[:] = rest
            if line == b"boom":
                raise RuntimeError("a bug in the protocol")
            if not conn.admitted:
                if line == b"hello":
                    answers += b"welcome\n" if self.admit(conn) else b"full\n"
                continue
            answers += line + b"\n"
        if answers:
            self.send(conn, answers)


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


# --- fairness between addresses, the three pools, holding and throttling ---------------------------------------
def connect_from(port: int, source: str) -> socket.socket:
    """A client from another loopback address (all of 127.0.0.0/8 is local): another machine, for the server."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


class Tracked(Echo):
    """Echo, recording whom it evicted and answering them."""

    def __init__(self, limits: Limits) -> None:
        super().__init__("tracked", "127.0.0.1", 0, limits)
        self.evicted_peers: list[str] = []

    def on_evict(self, conn: Connection) -> None:
        self.evicted_peers.append(conn.source)
        self.finish(conn, b"evicted\n")

    def evictable(self, conn: Connection, now: float) -> bool:
        return conn.inbuf.startswith(b"ready")


@pytest.fixture
def tracked() -> Iterator[Tracked]:
    server = Tracked(Limits(max_clients=2, max_pending=4, request_timeout=5.0, max_request_bytes=100, max_closing=3))
    server.start()
    yield server
    assert server.stop(1.0)


def tport(server: SelectorServer[Connection]) -> int:
    assert server.address is not None
    return server.address[1]


def test_a_greedy_address_gives_its_oldest_slot_to_another_address(tracked: Tracked) -> None:
    port = tport(tracked)
    hostile = [connect_from(port, "127.0.0.2") for _ in range(4)]  # every pending slot
    time.sleep(0.1)
    same = connect_from(port, "127.0.0.2")
    assert read_all(same) == b"busy\n"  # the greedy address itself gets no more
    legit = connect(port)  # another address: takes the slot of the greedy one's oldest
    assert read_all(hostile[0]) == b"evicted\n"
    legit.sendall(b"hello\nping\n")
    assert legit.recv(100).startswith(b"welcome\n")
    assert tracked.evicted_peers == ["127.0.0.2"] and tracked.evicted == 1 and tracked.refused == 1
    for s in [*hostile, same, legit]:
        s.close()


def test_every_address_is_sure_of_one_slot_and_equals_do_not_churn(tracked: Tracked) -> None:
    port = tport(tracked)
    each = [connect_from(port, f"127.0.0.{i}") for i in range(2, 6)]  # one slot each: all equal
    time.sleep(0.1)
    assert read_all(connect_from(port, "127.0.0.3")) == b"busy\n"  # holds one already: no churn between equals
    assert tracked.evicted == 0
    newcomer = connect_from(port, "127.0.0.6")  # holds none: takes the oldest slot among the equals
    assert read_all(each[0]) == b"evicted\n"
    newcomer.sendall(b"hello\n")
    assert newcomer.recv(100) == b"welcome\n" and tracked.evicted == 1
    for s in [*each, newcomer]:
        s.close()


def test_answerable_requests_make_room_before_anyone_is_refused(tracked: Tracked) -> None:
    port = tport(tracked)
    held = [connect(port) for _ in range(4)]
    held[1].sendall(b"ready")  # can be answered at once: it gives its slot, with its answer
    time.sleep(0.1)
    newcomer = connect(port)
    assert read_all(held[1]) == b"evicted\n"
    newcomer.sendall(b"hello\n")
    assert newcomer.recv(100) == b"welcome\n"
    for s in [*held, newcomer]:
        s.close()


def test_admitted_clients_are_bounded_apart_from_pending_ones(tracked: Tracked) -> None:
    port = tport(tracked)
    admitted = [connect(port) for _ in range(2)]
    for s in admitted:
        s.sendall(b"hello\n")
        assert s.recv(100) == b"welcome\n"
    pending = [connect(port) for _ in range(4)]  # unauthenticated clients still have their own four slots
    time.sleep(0.1)
    assert tracked.pending_count == 4 and tracked.client_count == 6
    pending[0].sendall(b"hello\n")  # but cannot be admitted while max_clients are
    assert pending[0].recv(100) == b"full\n"
    admitted.pop().close()
    time.sleep(0.1)
    pending[0].sendall(b"hello\n")
    assert pending[0].recv(100) == b"welcome\n"
    for s in admitted + pending:
        s.close()


@pytest.mark.slow
def test_closing_clients_are_bounded(tracked: Tracked) -> None:
    port = tport(tracked)
    # Clients that never read nor close: each answered, then drained; beyond max_closing the oldest goes at once.
    for _ in range(3):
        s = connect_from(port, "127.0.0.2")
        s.sendall(b"x" * 200)  # over max_request_bytes: answered and closing
        wait_until_true(lambda: len(tracked._closing) >= 1)
    assert len(tracked._closing) <= 3
    for _ in range(10):
        connect_from(port, "127.0.0.2").sendall(b"y" * 200)
    time.sleep(0.3)
    assert len(tracked._closing) <= 3


def wait_until_true(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


class Gate(Echo):
    """Admits on "hello <secret>"; a wrong secret costs its address time (Throttle + hold)."""

    def __init__(self) -> None:
        super().__init__("gate", "127.0.0.1", 0, Limits(max_clients=4, max_pending=8, request_timeout=10.0))
        self.throttle = Throttle(initial=0.4, maximum=1.6)
        self.failed: set[Connection] = set()

    def on_data(self, conn: Connection, eof: bool) -> None:
        if conn in self.failed:
            self.finish(conn, b"refused\n")
            return
        if b"\n" not in conn.inbuf or conn.admitted:
            return
        now = time.monotonic()
        wait = self.throttle.wait(conn.source, now)
        if wait > 0:
            self.hold(conn, now + wait)
            return
        line = bytes(conn.inbuf).partition(b"\n")[0]
        conn.inbuf.clear()
        if line == b"hello secret":
            self.throttle.succeeded(conn.source)
            self.admit(conn)
            self.send(conn, b"welcome\n")
        else:
            self.failed.add(conn)
            self.hold(conn, now + self.throttle.failed(conn.source, now))


@pytest.mark.slow
def test_wrong_secrets_cost_their_address_time_and_no_one_else() -> None:
    server = Gate()
    server.start()
    port = tport(server)
    try:
        guesser = [connect_from(port, "127.0.0.2") for _ in range(4)]
        t0 = time.monotonic()
        for s in guesser:
            s.settimeout(10)
            s.sendall(b"hello guess\n")
        with ThreadPoolExecutor(4) as pool:  # one answer per delay (0.4, 0.8, 1.6, 1.6 s apart), never at once
            answers = list(pool.map(lambda s: (read_all(s), time.monotonic() - t0), guesser))
        assert {a for a, _t in answers} == {b"refused\n"}
        answered = sorted(t for _a, t in answers)
        assert answered[0] > 0.35 and answered[-1] > 0.35 + 0.8 + 1.6 + 1.6
        assert all(b > a + 0.3 for a, b in itertools.pairwise(answered)), answered
        other = connect(port)  # another address is never slowed down
        t1 = time.monotonic()
        other.sendall(b"hello secret\n")
        assert other.recv(100) == b"welcome\n" and time.monotonic() - t1 < 0.3
        other.close()
    finally:
        assert server.stop(1.0)


def test_throttle_doubles_forgets_and_stays_bounded() -> None:
    t = Throttle(initial=1.0, maximum=8.0, forget=60.0, max_sources=3)
    assert t.wait("a", 0.0) == 0.0
    assert [t.failed("a", 0.0) for _ in range(2)] == [1.0, 3.0]  # the second waits behind the first
    assert t.wait("a", 0.5) == 2.5 and t.wait("b", 0.5) == 0.0
    assert t.failed("a", 100.0) == 1.0  # forgotten after a quiet minute
    t.succeeded("a")
    assert t.wait("a", 100.0) == 0.0
    for i in range(10):
        t.failed(f"s{i}", 200.0)
    assert len(t._penalties) == 3 and t.failures == 13


def test_a_refused_client_is_answered_from_its_request() -> None:
    class Stateless(Echo):
        def refusal_to(self, request: bytes) -> bytes:
            return b"answer to " + request if request else b"busy\n"

    server = Stateless("stateless", "127.0.0.1", 0, Limits(max_clients=1, max_pending=1, refuse_grace=0.2))
    server.start()
    port = tport(server)
    try:
        held = connect(port)
        time.sleep(0.1)
        asking = connect(port)
        asking.sendall(b"what?\n")
        assert read_all(asking) == b"answer to what?\n"
        silent = connect(port)
        assert read_all(silent) == b"busy\n"
        held.close()
    finally:
        assert server.stop(1.0)
