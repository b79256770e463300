"""The health socket: one TCP port that HAProxy, Nagios, nc and curl read unchanged (docs/NETWORK.md §2.2).

::

    on accept: peek up to 150 ms
      ├─ first bytes "GET " / "HEAD " -> read the request head (read_timeout, max_request_bytes), answer HTTP/1.0:
      │     /, /health   200 when up, 503 otherwise, body = the agent line
      │     /status      200, application/json: the health verdict and the counters (appliance.health.state)
      │     other path   404; malformed or oversized 400; too slow 408
      │     "GET /status" alone (HTTP/0.9, e.g. from nc): the body alone, no status line nor headers
      │     while every slot is taken, a request line whose headers have not ended is answered all the same:
      │     nothing in the headers changes the answer, so a client holding its request open holds no slot
      └─ silence, EOF or anything else (HAProxy agent-send) -> the agent line
    then shutdown(SHUT_WR), drain what the client still sends (0.5 s at most), close

The socket runs on :class:`appliance.netserver.SelectorServer` (one ``selectors`` thread, which says why): the
whole request has ``read_timeout`` from the accept and ``max_request_bytes`` in all; at most ``max_connections``
requests are read at once, shared fairly between client addresses (a newcomer from an address holding fewer takes
the slot of the oldest client of the address holding the most, which gets its answer at once: the agent line
for a silent client, the HTTP answer if its request line came). A client refused for lack of a slot still gets
50 ms to send its request and is answered from it (the HTTP answer if its request line came, else the agent line),
so an HTTP check never reads a bare agent line because others hold the slots. The loop reads only
:meth:`Stats.snapshot` (one short lock that the reader also takes briefly) and never waits on anything of the
reader's, so no client can delay decoding.

A silent check lasts the peek plus the client's own delays: HAProxy 2.6 was seen (tcpdump) holding back the last
ACK of the handshake by up to 200 ms on its checks, so an agent or ``tcp-check expect`` check takes up to ~0.35 s.
Keep ``agent-inter`` / ``timeout check`` at 1 s or more (HAProxy's default is 2 s).
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from typing import Final

from appliance.health.config import HealthConfig
from appliance.health.state import HealthState, evaluate, status_document
from appliance.netserver import Connection, Limits, SelectorServer
from appliance.stats import Stats

__all__ = ["HealthServer"]

_LOG = logging.getLogger(__name__)

PEEK_S: Final = 0.15  # an HTTP client speaks first within this; HAProxy's agent and nc stay silent
REFUSE_GRACE_S: Final = 0.05  # a refused client's request arrives within this (it is sent right after connect)
DRAIN_S: Final = 0.5  # after our answer, let the client finish sending so our close sends FIN, not RST
_METHODS: Final = (b"GET ", b"HEAD ")
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    503: "Service Unavailable",
}


@dataclass(eq=False, slots=True)
class _Conn(Connection):
    """One health client, and whether it spoke HTTP or the plain agent protocol."""

    phase: str = "peek"  # peek -> [http] -> answered (closing)


def request_path(target: str) -> str | None:
    """The path a request target names, without its query and fragment; None if its authority is malformed.

    The origin form (``/health?x``) is what HAProxy, curl and Nagios send; the absolute form
    (``http://host/health``) and ``//host/health`` are taken too.  Split by hand, not with urllib.parse, which
    would bring itself and ipaddress (0.5 MiB) into the service for this one split."""
    target = target.partition("#")[0].partition("?")[0]
    scheme, sep, rest = target.partition("://")
    if sep and scheme[:1].isalpha() and all(c.isalnum() or c in "+-." for c in scheme):
        authority_and_path = rest
    elif target.startswith("//"):
        authority_and_path = target[2:]
    else:
        return target
    authority, slash, path = authority_and_path.partition("/")
    if ("[" in authority) != ("]" in authority) or authority.find("[") > authority.find("]"):
        return None
    return slash + path


def _classify(buf: bytes) -> str | None:
    """``http`` or ``agent`` once the first bytes decide it; None while they could still start an HTTP method."""
    if buf.startswith(_METHODS):
        return "http"
    if not buf or any(m.startswith(buf) for m in _METHODS):
        return None
    return "agent"


class HealthServer(SelectorServer[_Conn]):
    """The health socket of :class:`HealthConfig`, answering from ``stats``.

    ::

        server = HealthServer(cfg.health, stats)
        server.start()        # binds now: a busy port raises OSError here
        ...
        server.stop(1.0)      # True when the thread has ended
    """

    def __init__(self, cfg: HealthConfig, stats: Stats) -> None:
        limits = Limits(
            max_clients=cfg.max_connections,
            max_pending=cfg.max_connections,  # nobody is ever admitted: every client is a request being read
            request_timeout=cfg.read_timeout,
            max_request_bytes=cfg.max_request_bytes,
            drain=DRAIN_S,
            refuse_grace=REFUSE_GRACE_S,
        )
        super().__init__("health socket", cfg.bind, cfg.port, limits)
        self.cfg = cfg
        self._stats = stats

    def state(self) -> HealthState:
        """The current verdict (what a silent client would read)."""
        return evaluate(self._stats.snapshot(), self.cfg)

    def start(self) -> None:
        """Bind and listen (raising OSError at once if that fails), then serve on a daemon thread."""
        super().start()
        assert self.address is not None
        _LOG.info("health socket on %s:%d", *self.address)

    # --- the protocol (SelectorServer hooks) -------------------------------------------------------------
    def new_connection(self, sock: socket.socket, peer: str, now: float) -> _Conn:
        return _Conn(sock, peer, now)

    def on_accept(self, conn: _Conn) -> None:
        conn.deadline = conn.accepted + PEEK_S  # silence until then: an agent check

    def refusal(self) -> bytes:
        """Beyond max_connections: the agent line, then close."""
        return self._agent_line()

    def refusal_to(self, request: bytes) -> bytes:
        """A refused client is answered from what it sent in its 50 ms: HTTP if its request line came."""
        if _classify(request[:5]) == "http":
            answer = self._http_answer(request, eof=False, final=True, local=False)
            if answer is not None:
                return answer
        return self._agent_line()

    def evictable(self, conn: _Conn, now: float) -> bool:
        """An HTTP request line has come: the answer does not depend on the headers still coming."""
        return conn.phase == "http" and b"\n" in conn.inbuf

    def on_evict(self, conn: _Conn) -> None:
        """Giving the slot to a client from a less greedy address: answered now with what it sent."""
        self._answer_now(conn)

    def on_expire(self, conn: _Conn, now: float) -> None:
        if conn.phase == "peek" and conn.inbuf:  # the start of a method, typed slowly: wait for the rest
            conn.phase = "http"
            conn.deadline = conn.accepted + self.cfg.read_timeout
            if conn.deadline > now:
                return
        self._answer_now(conn)

    def _answer_now(self, conn: _Conn) -> None:
        """Answer with what has come: the agent line to a silent client, the HTTP answer to a request line,
        else 408."""
        if conn.phase == "peek" and not conn.inbuf:
            self._respond(conn, self._agent_line())
            return
        answer = self._http_answer(bytes(conn.inbuf), eof=False, final=True, local=_is_local(conn))
        self._respond(conn, answer if answer is not None else self._http_error(408, b"request too slow\n"))

    def on_too_large(self, conn: _Conn) -> None:
        self._respond(conn, self._http_error(400, b"request too large\n"))

    def on_data(self, conn: _Conn, eof: bool) -> None:
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
        answer = self._http_answer(bytes(conn.inbuf), eof, local=_is_local(conn))
        if answer is not None:
            self._respond(conn, answer)

    def _respond(self, conn: _Conn, payload: bytes) -> None:
        self.finish(conn, payload, timeout=self.cfg.read_timeout)

    def _agent_line(self) -> bytes:
        return (self.state().line + "\n").encode("ascii")

    # --- HTTP --------------------------------------------------------------------------------------------
    def _http_answer(self, buf: bytes, eof: bool, final: bool = False, local: bool = False) -> bytes | None:
        """The whole response once the request head is complete (or cannot be), else None to read more.

        ``final``: answer from the request line even if the headers have not ended (None without a whole line).
        ``local``: the client is this machine (``status_detail = "local"`` shows it every counter).
        """
        end = buf.find(b"\n")
        if end < 0:
            if eof or len(buf) > self.cfg.max_request_bytes:
                return self._http_error(400, b"bad request\n")
            return None
        parts = buf[:end].split()
        if len(parts) == 3:  # HTTP/1.x: headers follow, up to an empty line
            if b"\n\n" not in buf and b"\n\r\n" not in buf and not eof and not final:
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
        path = request_path(target.decode("ascii", "replace"))
        if path is None:  # "//[": an unterminated IPv6 authority
            return self._http_error(400, b"bad request target\n")
        path = path.rstrip("/") or "/"
        text = "text/plain; charset=us-ascii"
        if path in ("/", "/health"):
            state = self.state()
            status, body, content_type = state.http_status, (state.line + "\n").encode("ascii"), text
        elif path == "/status":
            detail = self.cfg.status_detail == "full" or (self.cfg.status_detail == "local" and local)
            doc = status_document(self._stats.snapshot(), self.cfg, detail=detail)
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


def _is_local(conn: Connection) -> bool:
    """The client is this machine: it connected from the very address it connected to (127.0.0.1 to 127.0.0.1,
    the LAN address to itself).  Another loopback address counts as another machine: the safe side."""
    try:
        return bool(conn.sock.getsockname()[0] == conn.source)
    except OSError:
        return False


def _http(status: int, body: bytes, content_type: str, head_only: bool) -> bytes:
    header = (
        f"HTTP/1.0 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return header.encode("ascii") + (b"" if head_only else body)
