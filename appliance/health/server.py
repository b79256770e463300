"""The health socket: one TCP port that HAProxy, Nagios, nc and curl read unchanged (docs/NETWORK.md §2.2).

::

    on accept: peek up to 150 ms
      ├─ first bytes "GET " / "HEAD " -> read the request head (read_timeout, max_request_bytes), answer HTTP/1.0:
      │     /, /health   200 when up, 503 otherwise, body = the agent line
      │     /status      200, application/json: the health verdict and every counter
      │     other path   404; malformed or oversized 400; too slow 408
      │     "GET /status" alone (HTTP/0.9, e.g. from nc): the body alone, no status line nor headers
      └─ silence, EOF or anything else (HAProxy agent-send) -> the agent line
    then shutdown(SHUT_WR), drain what the client still sends (0.5 s at most), close

Why one ``selectors`` thread rather than a thread pool: each connection is tiny, but a slow or hostile client can
hold its slot for the whole read timeout.  A pool of N threads is stalled by N slowloris clients and each thread
costs a stack; one loop holds ``max_connections`` slow clients as cheaply as one and enforces every deadline
itself.  A client beyond ``max_connections`` gets the agent line at once and is closed, and the listen backlog is
bounded too, so nothing queues without limit.  The loop reads only :meth:`Stats.snapshot` (one short lock that
the reader also takes briefly) and never waits on anything of the reader's, so no client can delay decoding.

A silent check lasts the peek plus the client's own delays: HAProxy 2.6 was seen (tcpdump) holding back the last
ACK of the handshake by up to 200 ms on its checks, so an agent or ``tcp-check expect`` check takes up to ~0.35 s.
Keep ``agent-inter`` / ``timeout check`` at 1 s or more (HAProxy's default is 2 s).
"""

from __future__ import annotations

import json
import logging
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from appliance.config import HealthConfig
from appliance.health.state import HealthState, evaluate, status_document
from appliance.stats import Stats

__all__ = ["HealthServer"]

_LOG = logging.getLogger(__name__)

PEEK_S: Final = 0.15  # an HTTP client speaks first within this; HAProxy's agent and nc stay silent
DRAIN_S: Final = 0.5  # after our answer, let the client finish sending so our close sends FIN, not RST
DRAIN_MAX_BYTES: Final = 64 * 1024
TICK_S: Final = 0.2  # longest wait in select(): how soon stop() is noticed
ACCEPT_PAUSE_S: Final = 0.5  # after accept() fails (out of file descriptors), so the loop does not spin
RECV_CHUNK: Final = 4096
_METHODS: Final = (b"GET ", b"HEAD ")
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    503: "Service Unavailable",
}


@dataclass(slots=True, eq=False)
class _Conn:
    sock: socket.socket
    accepted: float
    deadline: float
    phase: str = "peek"  # peek -> [http] -> write -> drain -> closed
    events: int = selectors.EVENT_READ
    inbuf: bytearray = field(default_factory=bytearray)
    out: bytes = b""
    sent: int = 0
    drained: int = 0


def _classify(buf: bytes) -> str | None:
    """``http`` or ``agent`` once the first bytes decide it; None while they could still start an HTTP method."""
    if buf.startswith(_METHODS):
        return "http"
    if not buf or any(m.startswith(buf) for m in _METHODS):
        return None
    return "agent"


class HealthServer:
    """The health socket of :class:`HealthConfig`, answering from ``stats``.

    ::

        server = HealthServer(cfg.health, stats)
        server.start()        # binds now: a busy port raises OSError here
        ...
        server.stop(1.0)      # True when the thread has ended
    """

    def __init__(self, cfg: HealthConfig, stats: Stats) -> None:
        self.cfg = cfg
        self._stats = stats
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._sel = selectors.DefaultSelector()
        self._conns: set[_Conn] = set()
        self._accept_paused_until = 0.0
        self.address: tuple[str, int] | None = None

    def state(self) -> HealthState:
        """The current verdict (what a silent client would read)."""
        return evaluate(self._stats.snapshot(), self.cfg)

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind and listen (raising OSError at once if that fails), then serve on a daemon thread."""
        family = socket.AF_INET6 if ":" in self.cfg.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.cfg.bind, self.cfg.port))
            sock.listen(min(self.cfg.max_connections, 128))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        host, port = sock.getsockname()[:2]
        self.address = (host, port)
        self._sel.register(sock, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="health-socket", daemon=True)
        self._thread.start()
        _LOG.info("health socket on %s:%d", host, port)

    def stop(self, timeout: float = 1.0) -> bool:
        """Close every connection and the port; True when the thread ended within ``timeout`` seconds."""
        self._stop.set()
        if self._thread is None:  # never started
            self._sel.close()
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            _LOG.error("health socket thread did not stop within %.1f s; abandoning it", timeout)
            return False
        return True

    # --- loop --------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._once()
                except Exception:  # a bug must not silence the agent: log it and carry on
                    _LOG.exception("health socket: unexpected error")
                    self._stop.wait(TICK_S)
        finally:
            for conn in list(self._conns):
                self._close(conn)
            if self._listener is not None:
                self._listener.close()
            self._sel.close()

    def _once(self) -> None:
        now = time.monotonic()
        wait = min((c.deadline for c in self._conns), default=now + TICK_S) - now
        for key, mask in self._sel.select(min(max(wait, 0.0), TICK_S)):
            if key.data is None:
                self._accept()
            else:
                self._service(key.data, mask)
        self._expire(time.monotonic())

    def _service(self, conn: _Conn, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE:
                self._write(conn)
            if mask & selectors.EVENT_READ and conn.phase != "closed":
                self._read(conn)
        except Exception:  # a bug must cost one connection, never the agent
            _LOG.exception("health socket: error while serving a client")
            self._close(conn)

    def _timeout(self, conn: _Conn, now: float) -> None:
        try:
            if conn.phase == "peek" and conn.inbuf:  # the start of a method, typed slowly: wait for the rest
                conn.phase = "http"
                conn.deadline = conn.accepted + self.cfg.read_timeout
                if conn.deadline > now:
                    return
            if conn.phase == "peek":
                self._respond(conn, self._agent_line())
            elif conn.phase == "http":
                self._respond(conn, self._http_error(408, b"request too slow\n"))
            else:
                self._close(conn)
        except Exception:
            _LOG.exception("health socket: error while serving a client")
            self._close(conn)

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(64):
            try:
                sock, _addr = self._listener.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:  # reset before we got to it: nothing to serve
                continue
            except OSError as e:  # out of file descriptors or memory
                _LOG.warning("health socket: accept failed (%s); pausing for %.1f s", e, ACCEPT_PAUSE_S)
                self._sel.unregister(self._listener)
                self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S
                return
            sock.setblocking(False)
            if len(self._conns) >= self.cfg.max_connections:
                self._refuse(sock)
                continue
            now = time.monotonic()
            conn = _Conn(sock, now, now + PEEK_S)
            self._conns.add(conn)
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _refuse(self, sock: socket.socket) -> None:
        """Beyond max_connections: the agent line if the socket takes it right now, then close."""
        try:
            sock.send(self._agent_line())
        except OSError:
            pass
        except Exception:
            _LOG.exception("health socket: error while refusing a client")
        finally:
            sock.close()

    def _agent_line(self) -> bytes:
        return (self.state().line + "\n").encode("ascii")

    def _expire(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until and self._listener is not None:
            self._accept_paused_until = 0.0
            self._sel.register(self._listener, selectors.EVENT_READ, None)
        for conn in [c for c in self._conns if c.deadline <= now]:
            self._timeout(conn, now)

    # --- one connection ----------------------------------------------------------------------------------
    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(RECV_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        if conn.phase == "drain":
            conn.drained += len(data)
            if not data or conn.drained > DRAIN_MAX_BYTES:
                self._close(conn)
            return
        eof = not data
        conn.inbuf += data
        if conn.phase == "peek":
            kind = _classify(bytes(conn.inbuf[:5]))
            if kind == "http":
                conn.phase = "http"
                conn.deadline = conn.accepted + self.cfg.read_timeout
            elif kind == "agent" or eof:
                self._respond(conn, self._agent_line())
                return
            else:
                return
        answer = self._http_answer(bytes(conn.inbuf), eof)
        if answer is not None:
            self._respond(conn, answer)

    def _respond(self, conn: _Conn, payload: bytes) -> None:
        conn.inbuf.clear()
        conn.out, conn.sent, conn.phase = payload, 0, "write"
        conn.deadline = time.monotonic() + self.cfg.read_timeout
        self._write(conn)
        if conn.phase == "write":
            self._watch(conn, selectors.EVENT_WRITE)

    def _write(self, conn: _Conn) -> None:
        try:
            conn.sent += conn.sock.send(conn.out[conn.sent :])
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        if conn.sent < len(conn.out):
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.phase, conn.deadline = "drain", time.monotonic() + DRAIN_S
        self._watch(conn, selectors.EVENT_READ)

    def _watch(self, conn: _Conn, events: int) -> None:
        if conn.events != events:
            conn.events = events
            self._sel.modify(conn.sock, events, conn)

    def _close(self, conn: _Conn) -> None:
        if conn.phase == "closed":
            return
        conn.phase = "closed"
        self._conns.discard(conn)
        self._sel.unregister(conn.sock)
        conn.sock.close()

    # --- HTTP --------------------------------------------------------------------------------------------
    def _http_answer(self, buf: bytes, eof: bool) -> bytes | None:
        """The whole response once the request head is complete (or cannot be), else None to read more."""
        end = buf.find(b"\n")
        if end < 0:
            if eof or len(buf) > self.cfg.max_request_bytes:
                return self._http_error(400, b"bad request\n")
            return None
        parts = buf[:end].split()
        if len(parts) == 3:  # HTTP/1.x: headers follow, up to an empty line
            if b"\n\n" not in buf and b"\n\r\n" not in buf and not eof:
                if len(buf) > self.cfg.max_request_bytes:
                    return self._http_error(400, b"request too large\n")
                return None
            if not parts[2].startswith(b"HTTP/"):
                return self._http_error(400, b"bad request\n")
        elif len(parts) != 2:  # two words is the HTTP/0.9 form: "GET /status" from nc or a script
            return self._http_error(400, b"bad request\n")
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD") or len(buf) > self.cfg.max_request_bytes:
            return self._http_error(400, b"bad request\n")
        path = urlsplit(target.decode("ascii", "replace")).path.rstrip("/") or "/"
        text = "text/plain; charset=us-ascii"
        if path in ("/", "/health"):
            state = self.state()
            status, body, content_type = state.http_status, (state.line + "\n").encode("ascii"), text
        elif path == "/status":
            doc = status_document(self._stats.snapshot(), self.cfg)
            body = (json.dumps(doc, separators=(",", ":")) + "\n").encode("ascii")
            status, content_type = 200, "application/json"
        else:
            status, body, content_type = 404, b"not found: try /health or /status\n", text
        if len(parts) == 2:  # HTTP/0.9 has no status line nor headers: the body alone, ready for jq
            return body
        return _http(status, body, content_type, method == b"HEAD")

    @staticmethod
    def _http_error(status: int, body: bytes) -> bytes:
        return _http(status, body, "text/plain; charset=us-ascii", False)


def _http(status: int, body: bytes, content_type: str, head_only: bool) -> bytes:
    header = (
        f"HTTP/1.0 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return header.encode("ascii") + (b"" if head_only else body)
