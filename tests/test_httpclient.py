"""appliance.httpclient: the one bounded GET (requests) every HTTP client call goes through, against a local
server on 127.0.0.1: the byte bound stops the download, error statuses are answers, redirects are not followed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from appliance import httpclient

BIG = 50 * 1024 * 1024  # more than any caller reads: only the first max_bytes may cross the network


class Handler(BaseHTTPRequestHandler):
    sent = 0

    def log_message(self, *_args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(BIG))
            self.end_headers()
            block = b"x" * 65536
            try:
                for _ in range(BIG // len(block)):
                    self.wfile.write(block)
                    Handler.sent += len(block)
            except OSError:  # the client closed after its max_bytes, as it should
                return
            return
        status, location = {"/teapot": (418, None), "/moved": (302, "/teapot")}.get(self.path, (404, None))
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"body")


@pytest.fixture
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_the_byte_bound_stops_the_download(server: str) -> None:
    answer = httpclient.get(f"{server}/big", timeout=5, max_bytes=1000)
    assert answer.status == 200 and answer.truncated and answer.body == b"x" * 1000
    assert Handler.sent < BIG // 2  # the rest was never downloaded (the socket closed, the server gave up)


def test_error_statuses_are_answers_and_redirects_are_not_followed(server: str) -> None:
    teapot = httpclient.get(f"{server}/teapot", timeout=5, max_bytes=100)
    assert (teapot.status, teapot.body, teapot.truncated) == (418, b"body", False)
    moved = httpclient.get(f"{server}/moved", timeout=5, max_bytes=100)
    assert moved.status == 302 and moved.headers["location"] == "/teapot"


def test_unreachable_is_a_short_reason() -> None:
    from .util import free_port

    with pytest.raises(httpclient.HttpError, match=r"^connection refused$"):
        httpclient.get(f"http://127.0.0.1:{free_port()}/", timeout=2, max_bytes=10)
