"""The live page's HTTP server: the page's files, its snapshot and its event stream, on
:class:`appliance.netserver.SelectorServer` (one ``selectors`` thread, every bound of docs/WEB.md section 1 there).

::

    GET|HEAD /, /index.html        the page                          (Cache-Control: no-cache)
    GET|HEAD /static/<name>        app.css, app.js, index.html: kept in memory, no path ever resolved on disk
    GET|HEAD /api/snapshot         everything the page shows, JSON  (no-store)
    GET|HEAD /api/events           Server-Sent Events: frame, tariff, status, history; ": ping" every 15 s
    other path 404, other method 405 (Allow: GET, HEAD), malformed 400, too slow 408, too large 431,
    beyond max_clients 503, beyond max_subscribers 503 (Retry-After)

Every answer is ``Connection: close`` (HTTP/1.1 keep-alive would only add state to bound); nothing a client sends
is ever echoed back, printed, or able to change the appliance: the only methods are GET and HEAD and no route
writes.  The request, line and headers, has ``request_timeout`` from the accept and ``max_request_bytes`` in all
(:class:`~appliance.netserver.Limits`); a body is never read.

An event-stream subscriber is admitted (no request deadline any more) and gets every event; one whose socket
stops taking them is dropped when its unsent bytes pass :data:`SUBSCRIBER_BUFFER` (a page in a background tab of a
phone, a client that never reads), never waited for: the other subscribers and the reader do not notice it.
A ``: ping`` comment every :data:`PING_S` seconds keeps proxies from closing a quiet stream and finds the
subscribers that went away; the page reconnects by itself (``retry:``) and catches up with ``/api/snapshot``.

The server's counters are the ``web`` section of ``/status`` (health socket), refreshed every two seconds.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from dataclasses import dataclass
from typing import Any, Final

from appliance.health.config import HealthConfig
from appliance.health.state import evaluate, public_snapshot
from appliance.netserver import Connection, Limits, SelectorServer
from appliance.stats import Stats
from appliance.web import static_file, static_names
from appliance.web.config import WebConfig
from appliance.web.feed import LiveFeed
from appliance.web.live import sse_event, status_payload

__all__ = ["PING_S", "RETRY_MS", "SUBSCRIBER_BUFFER", "WebServer", "parse_request"]

_LOG = logging.getLogger(__name__)

PING_S: Final = 15.0
STATUS_S: Final = 10.0  # the status event at least this often
STATUS_CHECK_S: Final = 1.0  # ...and within this of a change (health, an output's state)
REPORT_S: Final = 2.0  # the /status section
RETRY_MS: Final = 2000  # how soon a browser reconnects after losing the stream
IDLE_S: Final = 4 * PING_S  # a subscriber to which nothing could be written for this long is gone
WRITE_S: Final = 10.0  # a client has this long to read a whole answer
SUBSCRIBER_BUFFER: Final = 256 * 1024  # unsent bytes a subscriber may owe before it is dropped (minutes of events)
MAX_TARGET: Final = 2048
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
_SECURITY: Final = (
    "X-Content-Type-Options: nosniff\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "X-Frame-Options: DENY\r\n"
    "Content-Security-Policy: default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'\r\n"
)


class BadRequest(ValueError):
    """A request that is not HTTP we answer: the status to send."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def parse_request(buf: bytes) -> tuple[str, str] | None:
    """``(method, path)`` of a complete request head in ``buf``; None while it is incomplete; :class:`BadRequest`
    for anything else.  Only the origin form (``GET /path?query HTTP/1.1``) is taken; the query is dropped.

    >>> parse_request(b"GET /api/snapshot?x=1 HTTP/1.1\\r\\nHost: teleinfo.local\\r\\n\\r\\n")
    ('GET', '/api/snapshot')
    >>> parse_request(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n") is None
    True
    """
    end = buf.find(b"\r\n\r\n")
    end_lf = buf.find(b"\n\n")
    if end < 0 or 0 <= end_lf < end:
        end = end_lf
    if end < 0:
        return None
    lines = buf[:end].replace(b"\r\n", b"\n").split(b"\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise BadRequest(400, "bad request line")
    target = parts[1]
    if not target.startswith(b"/") or len(target) > MAX_TARGET or not all(0x21 <= c <= 0x7E for c in target):
        raise BadRequest(400, "bad target")
    for line in lines[1:]:
        name, colon, _ = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadRequest(400, "bad header")
    return parts[0].decode("ascii"), target.split(b"?", 1)[0].split(b"#", 1)[0].decode("ascii")


def _head(status: int, content_type: str, length: int | None, cache: str, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        + ("" if length is None else f"Content-Length: {length}\r\n")
        + f"Cache-Control: {cache}\r\nConnection: close\r\n{_SECURITY}{extra}\r\n"
    ).encode("ascii")


def _plain(status: int, text: str, extra: str = "", head_only: bool = False) -> bytes:
    body = (text + "\n").encode("ascii")
    return _head(status, "text/plain; charset=us-ascii", len(body), "no-store", extra) + (b"" if head_only else body)


@dataclass(eq=False, slots=True)
class _Conn(Connection):
    """One page client; ``subscriber`` once it asked for the live event stream."""

    subscriber: bool = False


class WebServer(SelectorServer[_Conn]):
    """The live page of :class:`WebConfig`, from ``feed`` (the reader's side) and ``stats`` (``health`` decides
    the health word the page shows, as the health socket would).

    ::

        server = WebServer(cfg.web, feed, stats, cfg.health)
        server.start()        # binds now: a busy port raises OSError here
        ...
        server.stop(1.0)
    """

    def __init__(self, cfg: WebConfig, feed: LiveFeed, stats: Stats, health: HealthConfig) -> None:
        limits = Limits(
            max_clients=cfg.max_clients,
            request_timeout=cfg.request_timeout,
            max_request_bytes=cfg.max_request_bytes,
            idle_timeout=IDLE_S,
            max_out_bytes=SUBSCRIBER_BUFFER,
        )
        super().__init__("web server", cfg.bind, cfg.port, limits)
        self.cfg = cfg
        self.feed = feed
        self._stats = stats
        self._health = health
        self._files: dict[str, tuple[bytes, str]] = {}
        for name in static_names():
            found = static_file(name)
            if found is not None:
                self._files[name] = found
        self._subscribers: set[_Conn] = set()
        self._status: dict[str, Any] | None = None
        self._status_at = float("-inf")
        self._status_checked = float("-inf")
        self._pinged_at = time.monotonic()
        self._reported_at = float("-inf")
        self.counters: dict[str, int] = {
            "requests": 0,
            "refused": 0,
            "timeouts": 0,
            "too_large": 0,
            "bad_requests": 0,
            "subscribers_dropped": 0,
            "events": 0,
        }
        self.responses: dict[str, int] = {}

    def start(self) -> None:
        super().start()
        assert self.address is not None
        self.feed.notify = self.wake
        host, port = self.address
        _LOG.info("live page on http://%s:%d/", f"[{host}]" if ":" in host else host, port)
        self._report(time.monotonic())

    def stop(self, timeout: float = 1.0) -> bool:
        self.feed.notify = lambda: None
        done = super().stop(timeout)
        self._stats.set_extra("web", {**self._section(), "state": "stopped", "clients": 0, "subscribers": 0})
        return done

    # --- the protocol (SelectorServer hooks) -------------------------------------------------------------
    def new_connection(self, sock: socket.socket, peer: str, now: float) -> _Conn:
        return _Conn(sock, peer, now)

    def refusal(self) -> bytes:
        self.counters["refused"] += 1
        self._count(503)
        return _plain(503, "too many clients", "Retry-After: 5\r\n")

    def on_expire(self, conn: _Conn, now: float) -> None:
        self.counters["timeouts"] += 1
        self._answer(conn, _plain(408, "request too slow"), 408)

    def on_too_large(self, conn: _Conn) -> None:
        self.counters["too_large"] += 1
        self._answer(conn, _plain(431, "request too large"), 431)

    def on_close(self, conn: _Conn) -> None:
        self._subscribers.discard(conn)

    def on_data(self, conn: _Conn, eof: bool) -> None:
        if conn.subscriber:  # a subscriber has nothing more to say: whatever it sends is dropped
            conn.inbuf.clear()
            return
        try:
            request = parse_request(bytes(conn.inbuf))
        except BadRequest as e:
            self.counters["bad_requests"] += 1
            self._answer(conn, _plain(e.status, "bad request"), e.status)
            return
        if request is None:
            if eof:  # the client gave up before the end of its request
                self.close(conn)
            return
        self.counters["requests"] += 1
        method, path = request
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            self._answer(conn, _plain(405, "read-only: GET and HEAD only", "Allow: GET, HEAD\r\n"), 405)
        elif path == "/api/events":
            self._subscribe(conn, head_only)
        elif path == "/api/snapshot":
            body = json.dumps(self.feed.snapshot(self._current_status()), separators=(",", ":")).encode()
            self._answer(conn, self._ok(body, "application/json", "no-store", head_only), 200)
        else:
            name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/static/")
            found = self._files.get(name) if path.startswith("/static/") or name == "index.html" else None
            if found is None:
                self._answer(conn, _plain(404, "not found", head_only=head_only), 404)
            else:
                self._answer(conn, self._ok(found[0], found[1], "no-cache", head_only), 200)

    def tick_due(self, now: float) -> float:
        """Pages that follow the stream hear of a status change within :data:`STATUS_CHECK_S`."""
        return now + STATUS_CHECK_S if self._subscribers else super().tick_due(now)

    def on_tick(self, now: float) -> None:
        events = self.feed.take()
        if now - self._status_checked >= STATUS_CHECK_S:
            self._status_checked = now
            status = self._current_status()
            if self._status_changed(status, now):
                events.append(sse_event("status", status))
        if now - self._pinged_at >= PING_S:
            self._pinged_at = now
            events.append(b": ping\n\n")
        if events and self._subscribers:
            chunk = b"".join(events)
            for conn in list(self._subscribers):
                if not self.send(conn, chunk):  # its buffer is full: it does not read; closed
                    self.counters["subscribers_dropped"] += 1
                    _LOG.debug("web server: %s does not read its event stream; dropped", conn.peer)
            self.counters["events"] += sum(1 for e in events if e.startswith(b"event:")) * len(self._subscribers)
        if now - self._reported_at >= REPORT_S:
            self._report(now)

    # --- answers ------------------------------------------------------------------------------------------
    def _ok(self, body: bytes, content_type: str, cache: str, head_only: bool) -> bytes:
        return _head(200, content_type, len(body), cache) + (b"" if head_only else body)

    def _answer(self, conn: _Conn, data: bytes, status: int) -> None:
        self._count(status)
        self.finish(conn, data, timeout=WRITE_S)

    def _count(self, status: int) -> None:
        self.responses[str(status)] = self.responses.get(str(status), 0) + 1

    def _subscribe(self, conn: _Conn, head_only: bool) -> None:
        if len(self._subscribers) >= self.cfg.max_subscribers:
            self.counters["refused"] += 1
            self._answer(conn, _plain(503, "too many event streams", "Retry-After: 5\r\n"), 503)
            return
        head = _head(200, "text/event-stream; charset=utf-8", None, "no-store", "X-Accel-Buffering: no\r\n")
        if head_only:
            self._answer(conn, head, 200)
            return
        self._count(200)
        self.admit(conn)  # a long-lived stream: no request deadline from now on, the idle timeout instead
        conn.subscriber = True
        conn.inbuf.clear()
        self._subscribers.add(conn)
        self.send(conn, head + f"retry: {RETRY_MS}\n\n".encode())

    # --- status ----------------------------------------------------------------------------------------------
    def _current_status(self) -> dict[str, Any]:
        snap = self._stats.snapshot()
        state = evaluate(snap, self._health)
        return status_payload(
            snap.uptime_s, {"state": state.state, "line": state.line}, public_snapshot(snap, self._health)
        )

    def _status_changed(self, status: dict[str, Any], now: float) -> bool:
        old = self._status
        self._status = status
        if old is None or now - self._status_at >= STATUS_S or _steady(old) != _steady(status):
            self._status_at = now
            return True
        return False

    def _section(self) -> dict[str, Any]:
        host, port = self.address or (self.cfg.bind, self.cfg.port)
        return {
            "state": "up",
            "address": f"{host}:{port}",
            "clients": self.client_count,
            "subscribers": len(self._subscribers),
            "max_subscribers": self.cfg.max_subscribers,
            **self.counters,
            "events_dropped": self.feed.events_dropped,
            "responses": dict(self.responses),
        }

    def _report(self, now: float) -> None:
        self._reported_at = now
        self._stats.set_extra("web", self._section())


def _steady(status: dict[str, Any]) -> dict[str, Any]:
    """A status event without what changes every second (the uptime, the frame count in the health line)."""
    health = status.get("health") or {}
    return {**status, "uptime_s": None, "health": health.get("state")}
