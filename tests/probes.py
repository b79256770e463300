"""Probes for the socket tests: the process's file descriptors and memory, a stand-in reader loop that measures
its own progress, and a line-protocol client with an abrupt (RST) close."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


class Feeder:
    """Calls ``step(i)`` every ``interval`` seconds on a thread, like the reader loop handing out frames.

    ``max_gap`` is the longest time between two calls: a step that blocked on a socket would show here.
    """

    def __init__(self, step: Callable[[int], None], interval: float = 0.01) -> None:
        self.step = step
        self.interval = interval
        self.count = 0
        self.max_gap = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        assert not self._thread.is_alive(), "the feeder is stuck"

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            self.step(self.count)
            self.count += 1
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            last = now
            self._stop.wait(self.interval)


class LineClient:
    """A control-socket client: one line out, lines in, with timeouts."""

    def __init__(self, port: int, timeout: float = 3.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window never grows beyond it
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""

    def send(self, line: str | bytes) -> None:
        self.sock.sendall((line.encode() if isinstance(line, str) else line) + b"\n")

    def readline(self, timeout: float = 3.0) -> str:
        """The next line; AssertionError on timeout, '' at EOF."""
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no line within {timeout} s (have {self.buf[:80]!r})") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                rest, self.buf = self.buf, b""
                return rest.decode()
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def ask(self, line: str) -> str:
        self.send(line)
        return self.readline()

    def at_eof(self, timeout: float = 3.0) -> bool:
        """True once the server has closed (after any lines still pending)."""
        while True:
            line = self.readline(timeout)
            if line == "":
                return True

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        reset(self.sock)

    def collect(self, lines: list[str]) -> None:
        """Append every line to ``lines`` until EOF, a 10 s silence or the socket is closed (a thread's loop)."""
        try:
            while line := self.readline(10):
                lines.append(line)
        except (OSError, AssertionError):
            return


def reset(sock: socket.socket) -> None:
    """Abrupt disconnect: SO_LINGER 0 makes close() send RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
