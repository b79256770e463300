"""One ``selectors`` loop under every listening socket: accepting, per-client bounds, buffered writes, closing.

The health socket, the control socket (and the live page's HTTP server to come) differ only in what they say;
everything a hostile or broken peer can abuse is here, once:

- three pools, each bounded on its own, so that no kind of client can take the others' room:

  * *pending* clients (``max_pending``): connected, request not complete, not authenticated yet;
  * *admitted* clients (``max_clients``): authenticated, or holding a long-lived stream (:meth:`admit`, which
    refuses when this pool is full, so unauthenticated connections can never lock out an operator);
  * *closing* clients (``max_closing``): answered, their last bytes leaving and the rest of their request being
    drained; beyond the bound the oldest is closed at once (it only loses the politeness of a FIN);

- fairness between source addresses: when the pending pool is full, a newcomer takes the slot of the oldest
  pending client of the address that holds the most slots (the one whose oldest is oldest, among equals),
  provided the newcomer's address holds none, or two fewer than that one (:meth:`on_evict` says goodbye to it):
  every address is sure of one slot, and equals never churn; failing that, the oldest pending client the protocol
  calls :meth:`evictable` (a request that can already be answered, a client silent too long: it gets its answer
  or its error now), whatever its address; otherwise the newcomer is refused
  (:meth:`refusal_to`).  So hostile clients from other machines can never keep a client from its slot, however
  many connections they open; only a flood from the client's own address can (nothing can tell them apart);
- a refused client may be given ``refuse_grace`` seconds to send its first bytes, so a protocol can still
  answer a stateless request (the health socket's HTTP check) without a slot;
- a *whole-request* deadline (``request_timeout``, from accept until the protocol calls :meth:`admit`) and a
  byte bound on everything a client sends before that (``max_request_bytes``, all reads together, not per
  read), so a slowloris client trickling one byte a second holds its slot for ``request_timeout`` at most;
- an idle timeout for admitted clients (``idle_timeout``: nothing received nor sent for that long);
- a bounded output buffer per client (``max_out_bytes``): a client that does not read what it asked for is
  closed, never waited for; a protocol that streams (watchers, Server-Sent Events) checks :attr:`Connection.outbuf`
  itself and drops what a slow reader cannot take;
- holding a client (:meth:`hold`): its bytes are left unread until a given time, then :meth:`on_data` runs
  again; with :class:`Throttle` (a per-address delay that doubles on every failure) this makes a wrong token
  cost its sender time instead of being answered at once;
- closing politely: :meth:`finish` sends the last bytes, then ``shutdown(SHUT_WR)`` and drains what the client
  still sends (``drain`` seconds, 64 KiB at most) so that our close sends FIN, not RST, which would destroy the
  answer in flight;
- a bug in a protocol costs one connection (logged), never the socket; running out of file descriptors pauses
  accepting for half a second instead of spinning.

Why one thread with ``selectors`` rather than a thread per client: each connection is tiny, but a slow client
can hold its slot for a whole deadline; N threads are stalled by N slowloris clients and each costs a stack,
while one loop holds ``max_clients`` of them as cheaply as one and enforces every deadline itself.

A protocol subclasses :class:`SelectorServer` and overrides the hooks (``on_accept``, ``on_data``,
``on_expire``, ``on_evict``, ``on_close``, ``on_tick``, ``refusal``/``refusal_to``), all called on the
server's thread; the only methods other threads may call are :meth:`start`, :meth:`stop` and :meth:`wake`
(which makes ``on_tick`` run soon: how a producer hands over data to stream).  :class:`SourcePool` and
:class:`Throttle` are usable on their own by a server that is not built on the loop (``teleinfo sync-server``).
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from appliance.runtime import stop_thread

__all__ = ["Connection", "Limits", "SelectorServer", "SourcePool", "Throttle"]

_LOG = logging.getLogger(__name__)

TICK_S: Final = 2.0  # longest wait in select() (stop() and wake() interrupt it; deadlines shorten it)
ACCEPT_PAUSE_S: Final = 0.5  # after accept() fails (out of file descriptors), so the loop does not spin
ACCEPT_BATCH: Final = 64  # connections accepted per readiness event, so a flood cannot starve the clients
RECV_CHUNK: Final = 4096
DRAIN_MAX_BYTES: Final = 64 * 1024  # what a closing client may still send before we stop being polite


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of one listening socket (see the module docstring); None: no such bound."""

    max_clients: int  # admitted clients at once
    request_timeout: float | None = None
    max_request_bytes: int | None = None
    max_pending: int | None = None  # clients not admitted yet, at once (None: max_clients)
    idle_timeout: float | None = None
    max_out_bytes: int = 128 * 1024
    drain: float = 0.5  # seconds a closing client gets to finish sending after our last byte
    max_closing: int | None = None  # clients being closed politely (None: max_clients + max_pending)
    refuse_grace: float = 0.0  # seconds a refused client gets to send its first bytes (refusal_to)

    @property
    def pending_limit(self) -> int:
        return self.max_clients if self.max_pending is None else self.max_pending

    @property
    def closing_limit(self) -> int:
        return self.max_clients + self.pending_limit if self.max_closing is None else self.max_closing


@dataclass(eq=False, slots=True)
class Connection:
    """One client.  Protocols subclass it for their own state; the fields here belong to the server: ``inbuf``
    holds what was received and not yet consumed (the protocol deletes what it used), ``outbuf`` what waits to
    be sent.  ``source`` is the peer's address without the port (what fairness and throttling count by)."""

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
    source: str = ""
    held_until: float | None = None  # hold(): not read until then


T = TypeVar("T", bound=Hashable)


class SourcePool(Generic[T]):
    """Items (connections) by source address, at most ``limit`` in all, shared fairly between addresses.

    :meth:`make_room` says whether a newcomer from an address may come in, and which item it displaces: when the
    pool is full, the oldest item of the address holding the most (among equals, the one whose oldest item is
    the oldest), if the newcomer's address holds none (every address is sure of one slot) or at least two fewer
    (so the displaced address still holds as many as the newcomer's afterwards: no churn between equals).  Not
    thread-safe: one thread, or the caller's lock.

    >>> pool: SourcePool[str] = SourcePool(3)
    >>> for item in ("a1", "a2", "a3"):
    ...     pool.add(item, "10.0.0.1")
    >>> pool.make_room("10.0.0.2")
    (True, 'a1')
    >>> pool.make_room("10.0.0.1")
    (False, None)
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_source: dict[str, dict[T, int]] = {}  # item -> arrival number, insertion-ordered: oldest first
        self._source_of: dict[T, str] = {}
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._source_of)

    def __contains__(self, item: object) -> bool:
        return item in self._source_of

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._source_of))

    def count(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    def add(self, item: T, source: str) -> None:
        self._source_of[item] = source
        self._arrivals += 1
        self._by_source.setdefault(source, {})[item] = self._arrivals

    def discard(self, item: T) -> None:
        source = self._source_of.pop(item, None)
        if source is None:
            return
        items = self._by_source[source]
        del items[item]
        if not items:
            del self._by_source[source]

    def make_room(self, source: str) -> tuple[bool, T | None]:
        """(True, None): a slot is free; (True, victim): the caller must remove ``victim`` first; (False, None):
        refused."""
        if len(self._source_of) < self.limit:
            return True, None
        victim = self.victim(source)
        return victim is not None, victim

    def victim(self, source: str) -> T | None:
        """The item a newcomer from ``source`` may displace, whatever the fill level (None: none may be)."""
        mine = self.count(source)
        best: dict[T, int] | None = None
        for items in self._by_source.values():
            if best is None or (len(items), -next(iter(items.values()))) > (len(best), -next(iter(best.values()))):
                best = items
        if best is None or len(best) < (1 if mine == 0 else mine + 2):
            return None
        return next(iter(best))


@dataclass(slots=True)
class _Penalty:
    """One address's failed attempts and the time before which it is not heard again."""

    failures: int
    until: float
    last: float


class Throttle:
    """A per-address delay for failed attempts (a wrong token): the first failure costs ``initial`` seconds,
    each further one twice as much up to ``maximum``; an address with no failure for ``forget`` seconds starts
    afresh, a success clears it.  At most ``max_sources`` addresses are remembered (the stalest forgotten first).

    :meth:`wait` is how long an attempt from ``source`` must wait before it is even examined; :meth:`failed`
    records a failure and returns how long its answer waits.  A guesser thus gets one answer per delay, whatever
    the number of its connections, while other addresses are never slowed.  Not thread-safe (one thread, or the
    caller's lock).
    """

    def __init__(
        self, initial: float = 1.0, maximum: float = 8.0, forget: float = 300.0, max_sources: int = 4096
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.forget = forget
        self.max_sources = max_sources
        self._penalties: dict[str, _Penalty] = {}
        self.failures = 0  # every failure recorded (a counter for status documents)

    def wait(self, source: str, now: float) -> float:
        p = self._penalties.get(source)
        return 0.0 if p is None else max(0.0, p.until - now)

    def failed(self, source: str, now: float) -> float:
        self.failures += 1
        p = self._penalties.pop(source, None)
        if p is None or now - p.last > self.forget:
            p = _Penalty(0, now, now)
        delay = min(self.maximum, self.initial * 2 ** min(p.failures, 30))
        p.failures += 1
        p.until = max(p.until, now) + delay
        p.last = now
        self._penalties[source] = p  # re-inserted: the dict stays ordered by last failure
        while len(self._penalties) > self.max_sources:
            del self._penalties[next(iter(self._penalties))]
        return p.until - now

    def succeeded(self, source: str) -> None:
        self._penalties.pop(source, None)


C = TypeVar("C", bound=Connection)


@dataclass(slots=True)
class _Refused:
    """A connection over the limit: told why, then closed at its deadline."""

    sock: socket.socket
    deadline: float
    data: bytearray


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
        self._pending: SourcePool[C] = SourcePool(limits.pending_limit)
        self._live = 0  # admitted and not closing
        self._closing: dict[C, None] = {}  # closing, oldest first
        self._held: set[C] = set()
        self._refused: dict[socket.socket, _Refused] = {}
        self._accept_paused_until = 0.0
        self.refused = 0  # clients refused (pending pool full); counters a protocol may publish
        self.evicted = 0  # pending clients displaced by a client from a less greedy address

    # --- hooks (the server's thread) --------------------------------------------------------------------
    def new_connection(self, sock: socket.socket, peer: str, now: float) -> C:
        """The object that holds one client's state (a protocol's :class:`Connection` subclass)."""
        raise NotImplementedError

    def on_accept(self, conn: C) -> None:
        """A client connected (``conn.deadline`` is its request deadline, if any)."""

    def on_data(self, conn: C, eof: bool) -> None:
        """Bytes arrived (in ``conn.inbuf``), or the client closed its side (``eof``: then the connection is
        closed after this hook unless it called :meth:`finish` or :meth:`close`).  Also called, with what is
        left in ``conn.inbuf``, when a :meth:`hold` ends."""

    def on_expire(self, conn: C, now: float) -> None:
        """``conn.deadline`` passed before :meth:`admit`: by default, closed.  A protocol may answer, or set a
        later deadline."""
        self.close(conn)

    def on_too_large(self, conn: C) -> None:
        """The client sent more than ``max_request_bytes`` before :meth:`admit`: by default, closed."""
        self.close(conn)

    def evictable(self, conn: C, now: float) -> bool:
        """Pending ``conn`` may give its slot to a newcomer even from its own address, when the pending pool is
        full (then :meth:`on_evict` runs): a request that can be answered already, or a client that has not said
        what a real one says at once; by default, never."""
        return False

    def on_evict(self, conn: C) -> None:
        """Pending ``conn`` gives its slot to a client from an address holding fewer (module docstring): by
        default, closed.  A protocol may answer instead (:meth:`finish`), which also frees the slot."""
        self.close(conn)

    def on_idle(self, conn: C) -> None:
        """Admitted ``conn`` sent and read nothing for ``idle_timeout``: by default, closed."""
        self.close(conn)

    def on_close(self, conn: C) -> None:
        """``conn`` is gone (any reason); it was already removed from :attr:`connections`."""

    def on_tick(self, now: float) -> None:
        """After every pass of the loop (by :meth:`tick_due`, and soon after :meth:`wake`)."""

    def tick_due(self, now: float) -> float:
        """The latest monotonic time of the next :meth:`on_tick`: ``now`` + :data:`TICK_S`, or sooner for a
        protocol whose rules fall due on a timer (an idle server wakes rarely: a Pi's CPU)."""
        return now + TICK_S

    def refusal(self) -> bytes:
        """What a client refused for lack of a pending slot reads before it is closed."""
        return b""

    def refusal_to(self, request: bytes) -> bytes:
        """What a refused client reads, given the bytes it sent within ``refuse_grace`` (by default
        :meth:`refusal`): a stateless protocol can answer the request itself."""
        return self.refusal()

    # --- for protocols (the server's thread) ------------------------------------------------------------
    @property
    def connections(self) -> frozenset[C]:
        return frozenset(self._conns)

    @property
    def client_count(self) -> int:
        """Clients pending or admitted (not those being closed); an int read, safe from any thread."""
        return len(self._pending) + self._live

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def admit(self, conn: C) -> bool:
        """The request phase is over (authenticated, or a long-lived stream): no more request deadline nor
        request byte bound; the idle timeout applies from now.  False when ``max_clients`` are admitted already:
        the client stays pending, and the protocol refuses it (its own words, then :meth:`finish`)."""
        if conn.admitted:
            return True
        if conn.closing or self._live >= self.limits.max_clients:
            return False
        conn.admitted = True
        self._pending.discard(conn)
        self._live += 1
        conn.deadline = None
        conn.active = time.monotonic()
        return True

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
        if conn.closed or conn.closing:
            if not conn.closed and data:
                conn.outbuf += data
                self._flush(conn)
            return
        self._leave_pool(conn)
        conn.closing = True
        self._closing[conn] = None
        conn.inbuf.clear()
        conn.outbuf += data
        conn.deadline = time.monotonic() + (self.limits.drain if timeout is None else timeout)
        self._resume_reading(conn)
        self._flush(conn)
        while len(self._closing) > self.limits.closing_limit:
            self.close(next(iter(self._closing)))  # the oldest goodbye loses its politeness, not its slot

    def close(self, conn: C) -> None:
        """Close at once (idempotent); :meth:`on_close` runs."""
        if conn.closed:
            return
        self._leave_pool(conn)
        self._closing.pop(conn, None)
        self._held.discard(conn)
        conn.closed = conn.closing = True
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

    def hold(self, conn: C, until: float) -> None:
        """Leave ``conn``'s bytes unread until ``until`` (monotonic), then call :meth:`on_data` with what is in
        ``conn.inbuf``; its deadlines still run."""
        if conn.closed or conn.closing:
            return
        conn.held_until = until
        self._held.add(conn)
        self._set_events(conn, selectors.EVENT_WRITE if conn.outbuf else 0)

    def _leave_pool(self, conn: C) -> None:
        if conn.closing:
            return
        if conn.admitted:
            self._live -= 1
        else:
            self._pending.discard(conn)

    def _resume_reading(self, conn: C) -> None:
        if conn.held_until is not None:
            conn.held_until = None
            self._held.discard(conn)
            self._set_events(conn, selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0))

    def _set_events(self, conn: C, events: int) -> None:
        if events == conn.events or conn.closed:
            return
        if conn.events == 0:
            self._sel.register(conn.sock, events, conn)
        elif events == 0:
            self._sel.unregister(conn.sock)
        else:
            self._sel.modify(conn.sock, events, conn)
        conn.events = events

    # --- lifecycle (any thread) -------------------------------------------------------------------------
    def start(self) -> None:
        """Bind and listen (raising OSError at once if that fails), then serve on a daemon thread."""
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.bind, self.port))
            sock.listen(min(self.limits.max_clients + self.limits.pending_limit, 128))
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
            for refused in list(self._refused.values()):
                refused.sock.close()
            self._refused.clear()
            if self._listener is not None:
                self._listener.close()
            self._release()

    def _next_deadline(self, now: float) -> float:
        soonest = min(now + TICK_S, self.tick_due(now))
        idle = self.limits.idle_timeout
        for c in self._conns:
            if c.deadline is not None and c.deadline < soonest:
                soonest = c.deadline
            if c.held_until is not None and c.held_until < soonest:
                soonest = c.held_until
            if idle is not None and c.admitted and not c.closing and c.active + idle < soonest:
                soonest = c.active + idle
        for r in self._refused.values():
            soonest = min(soonest, r.deadline)
        return soonest

    def _once(self) -> None:
        now = time.monotonic()
        wait = max(self._next_deadline(now) - now, 0.0)
        for key, mask in self._sel.select(wait):
            if key.data is None:
                self._accept()
            elif key.data is self._wake_r:
                self._drain_wake()
            elif isinstance(key.data, _Refused):
                self._answer_refused(key.data, final=False)
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
            source = str(addr[0])
            room, victim = self._pending.make_room(source)
            if not room:
                victim = self._evictable()
                if victim is None:
                    self._refuse(sock)
                    continue
            if victim is not None:
                self.evicted += 1
                _LOG.debug("%s: %s gives its slot to a client from %s", self.name, victim.peer, source)
                self._guard(victim, self.on_evict, victim)
                if victim in self._pending:  # the protocol neither answered nor closed it
                    self.close(victim)
            now = time.monotonic()
            conn = self.new_connection(sock, f"{addr[0]}:{addr[1]}", now)
            conn.source = source
            conn.active = now
            if self.limits.request_timeout is not None:
                conn.deadline = now + self.limits.request_timeout
            self._conns.add(conn)
            self._pending.add(conn, source)
            self._sel.register(sock, selectors.EVENT_READ, conn)
            self._guard(conn, self.on_accept, conn)

    def _evictable(self) -> C | None:
        """The oldest pending client the protocol lets go for a newcomer, if any."""
        best: C | None = None
        now = time.monotonic()
        for conn in self._pending:
            if (best is None or conn.accepted < best.accepted) and self._safe_evictable(conn, now):
                best = conn
        return best

    def _safe_evictable(self, conn: C, now: float) -> bool:
        try:
            return self.evictable(conn, now)
        except Exception:
            _LOG.exception("%s: error while serving %s", self.name, conn.peer)
            return False

    def _refuse(self, sock: socket.socket) -> None:
        self.refused += 1
        grace = self.limits.refuse_grace
        if grace > 0 and len(self._refused) < self.limits.pending_limit:
            refused = _Refused(sock, time.monotonic() + grace, bytearray())
            self._refused[sock] = refused
            self._sel.register(sock, selectors.EVENT_READ, refused)
            return
        self._send_refusal(sock, b"")

    def _answer_refused(self, refused: _Refused, final: bool) -> None:
        """A refused client spoke (or its grace ended): answer it with :meth:`refusal_to`, close."""
        if not final:
            try:
                data = refused.sock.recv(RECV_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            refused.data += data
        del self._refused[refused.sock]
        self._sel.unregister(refused.sock)
        self._send_refusal(refused.sock, bytes(refused.data))

    def _send_refusal(self, sock: socket.socket, request: bytes) -> None:
        try:
            answer = self.refusal_to(request)
            sock.send(answer)
            if request:
                sock.shutdown(socket.SHUT_WR)
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
        write = selectors.EVENT_WRITE if conn.outbuf else 0
        if conn.closing:  # write the last bytes, then only drain (an EOF read must not cut the answer short)
            events = write or selectors.EVENT_READ
        elif conn.held_until is not None:
            events = write
        else:
            events = selectors.EVENT_READ | write
        self._set_events(conn, events)

    def _expire(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until and self._listener is not None:
            self._accept_paused_until = 0.0
            self._sel.register(self._listener, selectors.EVENT_READ, None)
        for refused in [r for r in self._refused.values() if r.deadline <= now]:
            self._answer_refused(refused, final=True)
        for conn in [c for c in self._held if c.held_until is not None and c.held_until <= now]:
            self._resume_reading(conn)
            self._guard(conn, self.on_data, conn, False)
        idle = self.limits.idle_timeout
        for conn in list(self._conns):
            if conn.closed:
                continue
            if conn.deadline is not None and conn.deadline <= now:
                if conn.closing:
                    self.close(conn)
                else:
                    self._guard(conn, self.on_expire, conn, now)
            elif idle is not None and conn.admitted and not conn.closing and now - conn.active >= idle:
                _LOG.debug("%s: %s idle for %.0f s; closing", self.name, conn.peer, idle)
                self._guard(conn, self.on_idle, conn)
