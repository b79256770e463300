"""A sync client speaking the raw protocol, for tests that send what the real client never would."""

from __future__ import annotations

import hashlib
import socket
from typing import Any

from appliance.sync.protocol import Connection, ProtocolError


class Raw:
    """The raw protocol, from ``source`` (another loopback address is another machine for the server)."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        self.conn = Connection(self.sock)

    def ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.conn.send(msg)
        return self.conn.recv()

    def hello(self, name: str, token: str) -> dict[str, Any]:
        return self.ask({"op": "hello", "v": 1, "name": name, "token": token})

    def closed(self) -> bool:
        """True once the server has closed the connection (after its error reply, if any)."""
        try:
            while True:
                self.conn.recv()
        except (ConnectionError, OSError, ProtocolError):
            return True

    def put(self, path: str, data: bytes, sha: str | None = None) -> dict[str, Any]:
        r = self.ask({"op": "put", "path": path, "size": len(data)})
        if r.get("ok") is not True:
            return r
        self.conn.send({"op": "data", "offset": 0}, data)
        return self.ask({"op": "commit", "sha256": sha or hashlib.sha256(data).hexdigest()})
