"""A stand-in for the appliance in the live page's browser tests: the page's static files and the JSON/SSE contract
of docs/WEB.md, played from real engine output, on 127.0.0.1 only.  The service itself is tested in the same file;
this one shows the page what a service cannot within a test's minutes (24 hours of history, HTTP errors).

The test decides what the page sees: :meth:`LivePageServer.publish` sends an event to every connected page,
:attr:`LivePageServer.snapshot` is what ``GET /api/snapshot`` answers, :meth:`LivePageServer.refuse` makes the
appliance unreachable (open streams cut, new ones and snapshots answered 503) until it is allowed again.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from appliance.web import static_file
from appliance.web.live import sse_event

__all__ = ["LivePageServer"]

RETRY_MS = 500  # the page reconnects this soon after losing the stream


class LivePageServer:
    def __init__(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self.snapshot = snapshot
        self._clients: list[queue.Queue[bytes | None]] = []
        self._lock = threading.Lock()
        self._refusing = False
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:
                owner.requests.append(self.path)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/":
                    path = "/static/index.html"
                if path.startswith("/static/"):
                    found = static_file(path.removeprefix("/static/"))
                    if found is None:
                        self._send(404, b"not found", "text/plain")
                    else:
                        self._send(200, found[0], found[1])
                elif owner._refusing:
                    self._send(503, b"unavailable", "text/plain")
                elif path == "/api/snapshot":
                    self._send(200, json.dumps(owner.snapshot()).encode(), "application/json")
                elif path == "/api/events":
                    self._stream()
                else:
                    self._send(404, b"not found", "text/plain")

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _stream(self) -> None:
                q: queue.Queue[bytes | None] = queue.Queue()
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                with owner._lock:
                    owner._clients.append(q)
                try:
                    self.wfile.write(f"retry: {RETRY_MS}\n\n".encode())
                    self.wfile.flush()
                    while True:
                        try:
                            item = q.get(timeout=1.0)
                        except queue.Empty:
                            item = b": ping\n\n"  # finds a page that went away
                        if item is None:
                            return
                        self.wfile.write(item)
                        self.wfile.flush()
                except OSError:
                    return
                finally:
                    with owner._lock:
                        if q in owner._clients:
                            owner._clients.remove(q)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self.server.serve_forever, name="live-page", daemon=True)
        self._thread.start()

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def publish(self, event: str, data: Mapping[str, Any] | list[Any]) -> None:
        chunk = sse_event(event, data)
        with self._lock:
            for q in self._clients:
                q.put(chunk)

    def refuse(self, refusing: bool = True) -> None:
        """Unreachable (True): streams are cut and requests answered 503; reachable again (False)."""
        self._refusing = refusing
        if refusing:
            with self._lock:
                for q in self._clients:
                    q.put(None)

    def close(self) -> None:
        self.refuse(True)
        self.server.shutdown()
        self.server.server_close()
