"""The sync server (``teleinfo sync-server``): accepts connections, logs clients in, and serves their requests
against their own trees in ``<root>/<client>/`` (``docs/SYNC.md``).

Confinement is :mod:`appliance.sync.tree` (every file-system call through ``O_NOFOLLOW`` directory descriptors
from the client's root); receiving a file is :mod:`appliance.sync.upload` (staged, hashed, resumable).

One thread per connection (a handful of appliances per household or a small fleet), at most
``max_connections``; every socket has a timeout, so a silent or vanished peer (abrupt disconnect) frees its
thread; a client that logs in again supersedes its previous connection at once.  Each connection may make at most
``max_requests_per_second`` requests (a token bucket); a flood is cut off.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import socket
import ssl
import stat
import threading
import time
from pathlib import Path
from typing import Any, Final

from appliance.sync.config import SyncServerConfig
from appliance.sync.protocol import VERSION, Connection, ProtocolError, check_name, check_path
from appliance.sync.tree import PARTIAL, Refused, Tree
from appliance.sync.upload import receive

__all__ = ["Refused", "SyncServer", "load_tokens"]

_LOG = logging.getLogger(__name__)

HELLO_TIMEOUT: Final = 10.0  # seconds a new connection has to log in
AUTH_FAIL_DELAY: Final = 0.5  # seconds before answering a wrong token: slows guessing


def load_tokens(path: Path) -> dict[str, str]:
    """``name token`` lines (``#`` comments); raises ValueError naming the bad line."""
    tokens: dict[str, str] = {}
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected 'name token'")
        name, token = parts
        try:
            check_name(name)
        except ProtocolError as e:
            raise ValueError(f"{path}:{n}: {e}") from None
        if len(token) < 16:
            raise ValueError(f"{path}:{n}: the token of {name} is shorter than 16 characters")
        tokens[name] = token
    return tokens


class _Bucket:
    """Token bucket: ``rate`` requests a second, bursts of as many."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class SyncServer:
    """The server: a listening socket, an accept thread, one thread per connection."""

    def __init__(self, cfg: SyncServerConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.root)
        self.port = 0
        self._tokens: dict[str, str] = {}
        self._tokens_mtime: float | None = None
        self._lock = threading.Lock()
        self._client_locks: dict[str, threading.Lock] = {}
        self._active: dict[str, Connection] = {}
        self._trees: dict[str, Tree] = {}
        self._slots = threading.BoundedSemaphore(cfg.max_connections)
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._tls: ssl.SSLContext | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Check the tokens file and the root, listen; raises OSError/ValueError with a clear message."""
        self._reload_tokens()
        (self.root / PARTIAL).mkdir(parents=True, exist_ok=True)
        if self.cfg.tls_cert:
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
        family = socket.AF_INET6 if ":" in self.cfg.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.cfg.bind, self.cfg.port))
        sock.listen(64)
        sock.settimeout(0.5)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="sync-accept", daemon=True)
        self._thread.start()
        _LOG.info(
            "sync-server: listening on %s:%d%s, trees in %s",
            self.cfg.bind,
            self.port,
            " (TLS)" if self._tls else "",
            self.root,
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            for conn in list(self._active.values()):
                conn.shutdown()

    def _reload_tokens(self) -> None:
        """Read the tokens file again if it changed (clients can be added without a restart)."""
        path = Path(self.cfg.tokens_file)
        mtime = path.stat().st_mtime
        if mtime != self._tokens_mtime:
            tokens = load_tokens(path)
            with self._lock:
                self._tokens, self._tokens_mtime = tokens, mtime

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                sock, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if self._stop.is_set():
                    return
                _LOG.warning("sync-server: accept failed: %s", e)
                time.sleep(0.1)
                continue
            if not self._slots.acquire(blocking=False):
                _LOG.warning("sync-server: refused %s: %d connections already", peer[0], self.cfg.max_connections)
                with contextlib.suppress(OSError):
                    sock.sendall(b'{"ok":false,"error":"server busy"}\n')
                sock.close()
                continue
            threading.Thread(target=self._serve, args=(sock, peer), name=f"sync-{peer[0]}", daemon=True).start()

    # --- one connection ----------------------------------------------------------------------------------
    def _serve(self, sock: socket.socket, peer: tuple[Any, ...]) -> None:
        who = f"{peer[0]}:{peer[1]}"
        name: str | None = None
        conn: Connection | None = None
        try:
            sock.settimeout(HELLO_TIMEOUT)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_side=True)
            conn = Connection(sock)
            name = self._login(conn, who)
            if name is None:
                return
            sock.settimeout(self.cfg.idle_timeout)
            self._session(conn, name, who)
        except ProtocolError as e:
            _LOG.warning("sync-server: %s (%s): protocol error, disconnected: %s", who, name or "not logged in", e)
            if conn is not None:
                with contextlib.suppress(OSError, ProtocolError):
                    conn.send({"ok": False, "error": str(e)})
        except (ConnectionError, TimeoutError, ssl.SSLError) as e:
            _LOG.info("sync-server: %s (%s) gone: %s", who, name or "not logged in", e)
        except OSError as e:
            _LOG.warning("sync-server: %s (%s): %s", who, name or "not logged in", e)
        finally:
            if conn is not None:
                conn.close()
            else:
                sock.close()
            if name is not None:
                with self._lock:
                    if self._active.get(name) is conn:
                        del self._active[name]
            self._slots.release()

    def _login(self, conn: Connection, who: str) -> str | None:
        msg = conn.recv()
        if msg.get("op") != "hello" or msg.get("v") != VERSION:
            raise ProtocolError(f"expected hello version {VERSION}")
        name = check_name(msg.get("name"))
        token = msg.get("token")
        try:
            self._reload_tokens()
        except (OSError, ValueError) as e:
            _LOG.error("sync-server: tokens file unusable, keeping the previous tokens: %s", e)
        with self._lock:
            expected = self._tokens.get(name)
        ok = isinstance(token, str) and expected is not None and hmac.compare_digest(token.encode(), expected.encode())
        if not ok:
            _LOG.warning("sync-server: %s: authentication refused for client %r", who, name)
            time.sleep(AUTH_FAIL_DELAY)
            conn.send({"ok": False, "error": "authentication refused"})
            return None
        with self._lock:
            previous = self._active.get(name)
            self._active[name] = conn
            lock = self._client_locks.setdefault(name, threading.Lock())
        if previous is not None:
            _LOG.info("sync-server: %s logged in again from %s: its previous connection is closed", name, who)
            previous.shutdown()
        with lock:  # the previous connection's request (if any) ends before this one starts
            tree = self._tree(name)
        conn.send({"ok": True, "v": VERSION, "max_file": int(self.cfg.max_file_mb * 1e6)})
        _LOG.info("sync-server: %s logged in from %s (%d files, %.1f MB)", name, who, tree.entries, tree.usage / 1e6)
        return name

    def _tree(self, name: str) -> Tree:
        tree = self._trees.get(name)
        if tree is None:
            root = self.root / name
            partial = self.root / PARTIAL / name
            for d in (root, partial):
                d.mkdir(parents=True, exist_ok=True)
                if not stat.S_ISDIR(os.lstat(d).st_mode):
                    raise OSError(f"{d} is not a directory")
            tree = Tree(root, partial, self.cfg.max_files)
            tree.scan()
            self._trees[name] = tree
        return tree

    def _session(self, conn: Connection, name: str, who: str) -> None:
        bucket = _Bucket(self.cfg.max_requests_per_second)
        with self._lock:
            lock = self._client_locks[name]
        while True:
            msg = conn.recv()
            if not bucket.take():
                raise ProtocolError(f"more than {self.cfg.max_requests_per_second:g} requests a second")
            op = msg.get("op")
            if op == "bye":
                return
            with lock:
                if self._active.get(name) is not conn:
                    return  # superseded by a newer login
                tree = self._trees[name]
                try:
                    reply = self._dispatch(conn, tree, op, msg)
                except Refused as e:
                    _LOG.warning("sync-server: %s (%s): refused %s: %s", who, name, op, e)
                    reply = {"ok": False, "error": str(e)}
                except ProtocolError as e:
                    raise ProtocolError(f"{op}: {e}") from None
            if reply is not None:
                conn.send(reply)

    def _dispatch(self, conn: Connection, tree: Tree, op: object, msg: dict[str, Any]) -> dict[str, Any] | None:
        if op == "list":
            files, dirs, skipped = tree.scan()
            payload = json.dumps({"files": files, "dirs": dirs}, separators=(",", ":")).encode()
            if skipped:
                _LOG.warning("sync-server: %s: ignored (neither file nor directory): %s", tree.root, skipped[:5])
            conn.send({"ok": True, "size": len(payload)}, payload)
            return None
        if op == "ping":
            return {"ok": True}
        if op == "mkdir":
            parts = check_path(msg.get("path"))
            with tree.dir_fd(parts, create=True):
                return {"ok": True}
        if op == "delete":
            parts = check_path(msg.get("path"))
            tree.delete(parts)
            return {"ok": True}
        if op == "rename":
            return tree.rename(check_path(msg.get("src")), check_path(msg.get("dst")))
        if op == "put":
            return receive(self.cfg, conn, tree, msg)
        raise ProtocolError(f"unknown operation {str(op)[:40]!r}")
