"""One ``selectors`` loop under every listening socket: accepting, per-client bounds, buffered writes, closing.

The health socket, the control socket (and the live page's HTTP server to come) differ only in what they say;
everything a hostile or broken peer can abuse is here, once:

- ``max_clients`` connections at once, and ``max_pending`` of them not yet admitted (a request still coming,
  a client not yet authenticated); a further one gets :meth:`SelectorServer.refusal` at once and is closed, and
  the listen backlog is bounded too, so nothing queues without limit;
- a *whole-request* deadline (``request_timeout``, from accept until the protocol calls :meth:`admit`) and a
  byte bound on everything a client sends before that (``max_request_bytes``, all reads together, not per
  read), so a slowloris client trickling one byte a second holds its slot for ``request_timeout`` at most;
- an idle timeout for admitted clients (``idle_timeout``: nothing received nor sent for that long);
- a bounded output buffer per client (``max_out_bytes``): a client that does not read what it asked for is
  closed, never waited for; a protocol that streams (watchers, Server-Sent Events) checks :attr:`Connection.outbuf`
  itself and drops what a slow reader cannot take;
- closing politely: :meth:`finish` sends the last bytes, then ``shutdown(SHUT_WR)`` and drains what the client
  still sends (``drain`` seconds, 64 KiB at most) so that our close sends FIN, not RST, which would destroy the
  answer in flight;
- a bug in a protocol costs one connection (logged), never the socket; running out of file descriptors pauses
  accepting for half a second instead of spinning.

Why one thread with ``selectors`` rather than a thread per client: each connection is tiny, but a slow client
can hold its slot for a whole deadline; N threads are stalled by N slowloris clients and each costs a stack,
while one loop holds ``max_clients`` of them as cheaply as one and enforces every deadline itself.

A protocol subclasses :class:`SelectorServer` and overrides the hooks (``on_accept``, ``on_data``,
``on_expire``, ``on_close``, ``on_tick``, ``refusal``), all called on the server's thread; the only methods
other threads may call are :meth:`start`, :meth:`stop` and :meth:`wake` (which makes ``on_tick`` run soon: how
a producer hands over data to stream).
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from appliance.runtime import stop_thread

__all__ = ["Connection", "Limits", "SelectorServer"]

_LOG = logging.getLogger(__name__)

TICK_S: Final = 2.0  # longest wait in select() (stop() and wake() interrupt it; deadlines shorten it)
ACCEPT_PAUSE_S: Final = 0.5  # after accept() fails (out of file descriptors), so the loop does not spin
ACCEPT_BATCH: Final = 64  # connections accepted per readiness event, so a flood cannot starve the clients
RECV_CHUNK: Final = 4096
DRAIN_MAX_BYTES: Final = 64 * 1024  # what a closing client may still send before we stop being polite


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of one listening socket (see the module docstring); None: no such bound."""

    max_clients: int
    request_timeout: float | None = None
    max_request_bytes: int | None = None
    max_pending: int | None = None  # None: max_clients
    idle_timeout: float | None = None
    max_out_bytes: int = 128 * 1024
    drain: float = 0.5  # seconds a closing client gets to finish sending after our last byte


@dataclass(eq=False, slots=True)
class Connection:
    """One client.  Protocols subclass it for their own state; the fields here belong to the server: ``inbuf``
    holds what was received and not yet consumed (the protocol deletes what it used), ``outbuf`` what waits to
    be sent."""

    sock: socket.socket
    peer: str
    accepted: float  # time.monotonic()
    deadline: float | None = None  # the request deadline while pending; the write/drain deadline once closing
    admitted: bool = False
    closing: bool = False
    closed: bool = False
    shut: bool = False  # our side is shut down (the last byte left): draining
    received: int = 0  # bytes received while pending (the request's byte bound)
    drained: int = 0
    active: float = 0.0  # last byte received or sent (idle timeout)
    events: int = selectors.EVENT_READ
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)


C = TypeVar("C", bound=Connection)


class SelectorServer(Generic[C]):
    """A TCP listening socket served by one daemon thread; subclass it for a protocol.

    ::

        class Echo(SelectorServer[Connection]):
            def on_data(self, conn, eof):
                if eof:
                    self.finish(conn)
                else:
                    self.send(conn, bytes(conn.inbuf))
                    conn.inbuf.clear()

        server = Echo("echo", "127.0.0.1", 0, Limits(max_clients=8))
        server.start()        # binds now: a busy port raises OSError here
        ...
        server.stop(1.0)      # True when the thread has ended
    """

    def __init__(self, name: str, bind: str, port: int, limits: Limits) -> None:
        self.name = name
        self.bind = bind
        self.port = port
        self.limits = limits
        self.address: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._conns: set[C] = set()
        self._pending = 0
        self._accept_paused_until = 0.0

    # --- hooks (the server's thread) --------------------------------------------------------------------
    def new_connection(self, sock: socket.socket, peer: str, now: float) -> C:
        """The object that holds one client's state (a protocol's :class:`Connection` subclass)."""
        raise NotImplementedError

    def on_accept(self, conn: C) -> None:
        """A client connected (``conn.deadline`` is its request deadline, if any)."""

    def on_data(self, conn: C, eof: bool) -> None:
        """Bytes arrived (in ``conn.inbuf``), or the client closed its side (``eof``: then the connection is
        closed after this hook unless it called :meth:`finish` or :meth:`close`)."""

    def on_expire(self, conn: C, now: float) -> None:
        """``conn.deadline`` passed before :meth:`admit`: by default, closed.  A protocol may answer, or set a
        later deadline."""
        self.close(conn)

    def on_too_large(self, conn: C) -> None:
        """The client sent more than ``max_request_bytes`` before :meth:`admit`: by default, closed."""
        self.close(conn)

    def on_close(self, conn: C) -> None:
        """``conn`` is gone (any reason); it was already removed from :attr:`connections`."""

    def on_tick(self, now: float) -> None:
        """After every pass of the loop (at least every TICK_S, and soon after :meth:`wake`)."""

    def refusal(self) -> bytes:
        """What a client beyond ``max_clients``/``max_pending`` reads before it is closed."""
        return b""

    # --- for protocols (the server's thread) ------------------------------------------------------------
    @property
    def connections(self) -> frozenset[C]:
        return frozenset(self._conns)

    @property
    def client_count(self) -> int:
        """Connected clients (admitted or not); an int read, safe from any thread."""
        return len(self._conns)

    def admit(self, conn: C) -> None:
        """The request phase is over (authenticated, or a long-lived stream): no more request deadline nor
        request byte bound; the idle timeout applies from now."""
        if not conn.admitted:
            conn.admitted = True
            self._pending -= 1
            conn.deadline = None
            conn.active = time.monotonic()

    def send(self, conn: C, data: bytes) -> bool:
        """Queue ``data`` and write what the socket takes now; False (and the client closed) when its buffer
        would pass ``max_out_bytes``: it does not read."""
        if conn.closed:
            return False
        conn.outbuf += data
        if len(conn.outbuf) > self.limits.max_out_bytes:
            _LOG.debug("%s: %s does not read its answers; disconnecting", self.name, conn.peer)
            self.close(conn)
            return False
        self._flush(conn)
        return not conn.closed

    def finish(self, conn: C, data: bytes = b"", timeout: float | None = None) -> None:
        """Send ``data`` as the last bytes, then close politely (FIN, drain); ``timeout`` bounds the write
        (default: ``drain``)."""
        if conn.closed:
            return
        if not conn.admitted:
            self._pending -= 1
            conn.admitted = True  # no longer pending: the request is answered
        conn.closing = True
        conn.inbuf.clear()
        conn.outbuf += data
        conn.deadline = time.monotonic() + (self.limits.drain if timeout is None else timeout)
        self._flush(conn)

    def close(self, conn: C) -> None:
        """Close at once (idempotent); :meth:`on_close` runs."""
        if conn.closed:
            return
        conn.closed = conn.closing = True
        if not conn.admitted:
            self._pending -= 1
        self._conns.discard(conn)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        try:
            self.on_close(conn)
        except Exception:
            _LOG.exception("%s: error while closing a client", self.name)

    # --- lifecycle (any thread) -------------------------------------------------------------------------
    def start(self) -> None:
        """Bind and listen (raising OSError at once if that fails), then serve on a daemon thread."""
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.bind, self.port))
            sock.listen(min(self.limits.max_clients, 128))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        host, port = sock.getsockname()[:2]
        self.address = (host, port)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(sock, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        self._thread = threading.Thread(target=self._run, name=self.name.replace(" ", "-"), daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Close every connection and the port; True when the thread ended within ``timeout`` seconds."""
        self._stop.set()
        if self._thread is None:  # never started
            self._release()
            return True
        self.wake()
        return stop_thread(self._thread, timeout, f"{self.name} thread", _LOG)

    def wake(self) -> None:
        """Make the loop run :meth:`on_tick` soon (any thread; never blocks)."""
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (a wake-up is already pending) or closed (stopped)
            pass

    # --- loop --------------------------------------------------------------------------------------------
    def _release(self) -> None:
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._once()
                except Exception:  # a bug must not end the socket: log it and carry on
                    _LOG.exception("%s: unexpected error", self.name)
                    self._stop.wait(TICK_S)
        finally:
            for conn in list(self._conns):
                self.close(conn)
            if self._listener is not None:
                self._listener.close()
            self._release()

    def _next_deadline(self, now: float) -> float:
        soonest = now + TICK_S
        idle = self.limits.idle_timeout
        for c in self._conns:
            if c.deadline is not None and c.deadline < soonest:
                soonest = c.deadline
            elif idle is not None and c.admitted and not c.closing and c.active + idle < soonest:
                soonest = c.active + idle
        return soonest

    def _once(self) -> None:
        now = time.monotonic()
        wait = min(max(self._next_deadline(now) - now, 0.0), TICK_S)
        for key, mask in self._sel.select(wait):
            if key.data is None:
                self._accept()
            elif key.data is self._wake_r:
                self._drain_wake()
            else:
                self._service(key.data, mask)
        now = time.monotonic()
        self._expire(now)
        try:
            self.on_tick(now)
        except Exception:
            _LOG.exception("%s: unexpected error", self.name)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:  # BlockingIOError: nothing left
            pass

    def _accept(self) -> None:
        assert self._listener is not None
        limits = self.limits
        max_pending = limits.max_clients if limits.max_pending is None else limits.max_pending
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = self._listener.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:  # reset before we got to it: nothing to serve
                continue
            except OSError as e:  # out of file descriptors or memory
                _LOG.warning("%s: accept failed (%s); pausing for %.1f s", self.name, e, ACCEPT_PAUSE_S)
                self._sel.unregister(self._listener)
                self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S
                return
            sock.setblocking(False)
            if len(self._conns) >= limits.max_clients or self._pending >= max_pending:
                self._refuse(sock)
                continue
            now = time.monotonic()
            conn = self.new_connection(sock, f"{addr[0]}:{addr[1]}", now)
            conn.active = now
            if limits.request_timeout is not None:
                conn.deadline = now + limits.request_timeout
            self._conns.add(conn)
            self._pending += 1
            self._sel.register(sock, selectors.EVENT_READ, conn)
            self._guard(conn, self.on_accept, conn)

    def _refuse(self, sock: socket.socket) -> None:
        try:
            sock.send(self.refusal())
        except OSError:
            pass
        except Exception:
            _LOG.exception("%s: error while refusing a client", self.name)
        finally:
            sock.close()

    def _guard(self, conn: C, hook: object, *args: object) -> None:
        """Run a protocol hook; a bug costs this connection only."""
        try:
            hook(*args)  # type: ignore[operator]
        except Exception:
            _LOG.exception("%s: error while serving %s", self.name, conn.peer)
            self.close(conn)

    def _service(self, conn: C, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if mask & selectors.EVENT_READ and not conn.closed:
            self._read(conn)

    def _read(self, conn: C) -> None:
        try:
            data = conn.sock.recv(RECV_CHUNK)
        except BlockingIOError:
            return
        except OSError:  # ECONNRESET: an abrupt disconnect is a departure like any other
            self.close(conn)
            return
        if conn.closing:  # draining after our last bytes
            conn.drained += len(data)
            if not data or conn.drained > DRAIN_MAX_BYTES:
                self.close(conn)
            return
        conn.active = time.monotonic()
        if not conn.admitted:
            conn.received += len(data)
        conn.inbuf += data
        eof = not data
        self._guard(conn, self.on_data, conn, eof)
        if conn.closed or conn.closing:
            return
        if eof:
            self.close(conn)
        elif not conn.admitted and self.limits.max_request_bytes is not None:
            if conn.received > self.limits.max_request_bytes:
                self._guard(conn, self.on_too_large, conn)

    def _flush(self, conn: C) -> None:
        if conn.closed:
            return
        if conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close(conn)
                return
            if sent:
                conn.active = time.monotonic()
                del conn.outbuf[:sent]
        if conn.closing and not conn.outbuf and not conn.shut:
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.close(conn)
                return
            conn.shut = True
            conn.deadline = time.monotonic() + self.limits.drain  # the drain, once the last byte left
        if conn.closing:  # write the last bytes, then only drain (an EOF read must not cut the answer short)
            events = selectors.EVENT_WRITE if conn.outbuf else selectors.EVENT_READ
        else:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        if events != conn.events:
            conn.events = events
            self._sel.modify(conn.sock, events, conn)

    def _expire(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until and self._listener is not None:
            self._accept_paused_until = 0.0
            self._sel.register(self._listener, selectors.EVENT_READ, None)
        idle = self.limits.idle_timeout
        for conn in list(self._conns):
            if conn.deadline is not None and conn.deadline <= now:
                if conn.closing:
                    self.close(conn)
                else:
                    self._guard(conn, self.on_expire, conn, now)
            elif idle is not None and conn.admitted and not conn.closing and now - conn.active >= idle:
                _LOG.debug("%s: %s idle for %.0f s; closing", self.name, conn.peer, idle)
                self.close(conn)
