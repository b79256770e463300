"""The sync protocol's wire format and rules, shared by client and server (``docs/SYNC.md`` is the spec).

A message is one JSON object on one line (UTF-8, at most :data:`MAX_LINE` bytes with its newline), optionally
followed by raw bytes whose count the message declares.  Line framing keeps the protocol readable with
``openssl s_client`` or ``nc`` while bounding what a peer can make the other buffer: a longer line is an error,
never an allocation.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from typing import Any, Final

from appliance.errors import ApplianceError

__all__ = [
    "CHUNK",
    "MAX_LINE",
    "READ_FLAGS",
    "VERSION",
    "Connection",
    "ProtocolError",
    "check_name",
    "check_path",
    "sha256_file_prefix",
]

VERSION: Final = 1
MAX_LINE: Final = 4096
CHUNK: Final = 64 * 1024
MAX_PATH_BYTES: Final = 1024
MAX_DEPTH: Final = 32
NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Opening a file to read it: never through a symlink, and never blocking on a FIFO that replaced a file since it
#: was checked (callers then refuse anything fstat does not call a regular file).
READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ProtocolError(ApplianceError):
    """The peer broke the protocol (garbage, a line too long, a bad field): the connection is closed."""


def check_name(name: object) -> str:
    """A client name, which is also its directory on the server: letters, digits, ``_`` and ``-``."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ProtocolError(f"invalid client name {str(name)[:80]!r} (1-64 letters, digits, '_' or '-')")
    return name


def check_path(path: object) -> tuple[str, ...]:
    """The components of a path relative to a client's tree; raises ProtocolError for anything that could leave
    it or confuse a file system: absolute paths, ``.``/``..``, empty components, NUL, backslashes, control
    characters, over-long names or paths, excessive depth."""
    if not isinstance(path, str) or not path:
        raise ProtocolError("path must be a non-empty string")
    try:
        path.encode("utf-8")  # a lone surrogate ("\udc80") would become a name that is not UTF-8 on disk
    except UnicodeEncodeError:
        raise ProtocolError(f"path is not valid Unicode: {path[:80]!r}") from None
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise ProtocolError(f"path longer than {MAX_PATH_BYTES} bytes")
    if path.startswith("/"):
        raise ProtocolError(f"absolute path refused: {path[:80]!r}")
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in path):
        raise ProtocolError(f"control character or backslash in path: {path[:80]!r}")
    parts = tuple(path.split("/"))
    if len(parts) > MAX_DEPTH:
        raise ProtocolError(f"path deeper than {MAX_DEPTH} levels")
    for part in parts:
        if part in ("", ".", ".."):
            raise ProtocolError(f"path component {part!r} refused: {path[:80]!r}")
        if len(part.encode("utf-8")) > 255:
            raise ProtocolError("path component longer than 255 bytes")
    return parts


def sha256_file_prefix(f: Any, length: int) -> tuple[Any, int]:
    """The sha256 object of the first ``length`` bytes of the open binary file ``f`` (from its start), and how
    many bytes there were (fewer if the file is shorter)."""
    h = hashlib.sha256()
    f.seek(0)
    left = length
    while left > 0:
        block = f.read(min(CHUNK, left))
        if not block:
            break
        h.update(block)
        left -= len(block)
    return h, length - left


class Connection:
    """Message framing over a connected (maybe TLS) socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    def send(self, msg: dict[str, Any], payload: bytes = b"") -> None:
        line = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_LINE:
            raise ProtocolError(f"message longer than {MAX_LINE} bytes")
        self.sock.sendall(line + payload)

    def recv(self) -> dict[str, Any]:
        """The next message; ProtocolError on garbage or a line too long, ConnectionError on EOF."""
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[: i + 1]
                break
            if len(self._buf) >= MAX_LINE:
                raise ProtocolError(f"line longer than {MAX_LINE} bytes")
            data = self.sock.recv(MAX_LINE)
            if not data:
                raise ConnectionError("connection closed by the peer")
            self._buf += data
        try:
            msg = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[..." nested too deep
            raise ProtocolError(f"not a JSON message: {line[:60]!r}") from None
        if not isinstance(msg, dict):
            raise ProtocolError("a message must be a JSON object")
        return msg

    def recv_exact(self, n: int) -> bytes:
        """Exactly ``n`` raw bytes (a list payload); ConnectionError on EOF."""
        out = bytearray()
        take = min(n, len(self._buf))
        out += self._buf[:take]
        del self._buf[:take]
        while len(out) < n:
            data = self.sock.recv(min(CHUNK, n - len(out)))
            if not data:
                raise ConnectionError("connection closed in the middle of a payload")
            out += data
        return bytes(out)

    def recv_some(self, limit: int) -> bytes:
        """Up to ``limit`` raw bytes (at least one): a file's data, written as it arrives."""
        if self._buf:
            take = bytes(self._buf[:limit])
            del self._buf[: len(take)]
            return take
        data = self.sock.recv(min(CHUNK, limit))
        if not data:
            raise ConnectionError("connection closed in the middle of a file")
        return data

    def shutdown(self) -> None:
        """End the connection from another thread: the thread serving it sees EOF and closes it itself."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.shutdown()
        self.sock.close()
