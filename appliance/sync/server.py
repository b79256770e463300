"""The sync server (``teleinfo sync-server``): accepts connections, logs clients in, and serves their requests
against their own trees in ``<root>/<client>/`` (``docs/SYNC.md``).

Confinement is :mod:`appliance.sync.tree` (every file-system call through ``O_NOFOLLOW`` directory descriptors
from the client's root); receiving a file is :mod:`appliance.sync.upload` (staged, hashed, resumable).

One thread per connection (a handful of appliances per household or a small fleet), at most
``max_connections``; every socket has a timeout, so a silent or vanished peer (abrupt disconnect) frees its
thread; a client that logs in again supersedes its previous connection at once.  Each connection may make at most
``max_requests_per_second`` requests (a token bucket); a flood is cut off.

Before logging in, a connection is *pending*, and strangers are bounded apart from clients:

- at most ``max_pending`` pending connections (never more than ``max_connections``), so logged-in clients keep
  the rest of the slots; when they are all taken, a newcomer from an address holding fewer takes the slot of the
  oldest pending connection of the address holding the most (:class:`appliance.netserver.SourcePool`, the rule
  every listening socket of the appliance follows), else that of the oldest connection not logged in after a
  second (a real client logs in within milliseconds), else it is told ``server busy``;
- the TLS handshake and the hello have ``HELLO_TIMEOUT`` seconds *in all* from the accept, not per read: the
  accept loop shuts down any pending connection past its deadline, so a client dripping a byte every few seconds
  holds its slot for 10 s at most;
- a wrong token is answered only after a delay that doubles with each failure from the same address (0.5 s up to
  8 s, :class:`appliance.netserver.Throttle`), and that address's next hello waits for the delay to end, however
  many connections it opens.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from appliance.netserver import SourcePool, Throttle
from appliance.sync.config import SyncServerConfig
from appliance.sync.protocol import VERSION, Connection, ProtocolError, check_name, check_path
from appliance.sync.tree import PARTIAL, Refused, Tree
from appliance.sync.upload import receive

__all__ = ["Refused", "SyncServer", "load_tokens"]

_LOG = logging.getLogger(__name__)

HELLO_TIMEOUT: Final = 10.0  # seconds a new connection has to log in (TLS handshake and hello, in all)
SLOW_HELLO: Final = 1.0  # with every pending slot taken, a connection not logged in by then gives its slot
REAP_INTERVAL: Final = 0.25  # how often the accept loop looks for pending connections past their deadline
BUSY: Final = b'{"ok":false,"error":"server busy"}\n'


@dataclass(eq=False)
class _Pending:
    """A connection not logged in yet: its socket (for the reaper) and its deadline."""

    sock: socket.socket
    source: str
    accepted: float
    deadline: float
    evicted: bool = False


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
        self._connections = 0  # threads serving a connection, pending or logged in (under _lock)
        self._pending: SourcePool[_Pending] = SourcePool(min(cfg.max_pending, cfg.max_connections))
        self._throttle = Throttle(initial=0.5, maximum=8.0)
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
        sock.settimeout(REAP_INTERVAL)
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
        last_busy_log = -60.0
        while not self._stop.is_set():
            self._reap(time.monotonic())
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
            source = str(peer[0])
            now = time.monotonic()
            pending = _Pending(sock, source, now, now + HELLO_TIMEOUT)
            if not self._admit_pending(pending):
                if now - last_busy_log >= 60:  # a flood of refusals is one line a minute
                    last_busy_log = now
                    _LOG.warning("sync-server: refused %s: server busy (%d connections)", source, self._connections)
                with contextlib.suppress(OSError):
                    sock.setblocking(False)
                    sock.send(BUSY)
                sock.close()
                continue
            threading.Thread(target=self._serve, args=(pending, peer), name=f"sync-{peer[0]}", daemon=True).start()

    def _admit_pending(self, pending: _Pending) -> bool:
        """Find a slot for a new connection, displacing a greedier address's pending one if need be."""
        with self._lock:
            full = self._connections >= self.cfg.max_connections or len(self._pending) >= self._pending.limit
            if full:
                victim = self._pending.victim(pending.source)
                if victim is None and len(self._pending):  # else the oldest that is slow to log in, any address
                    oldest = min(self._pending, key=lambda p: p.accepted)
                    victim = oldest if pending.accepted - oldest.accepted >= SLOW_HELLO else None
                if victim is None:
                    return False
                self._drop_pending(victim, evicted=True)
                _LOG.info("sync-server: %s gives its pending slot to %s", victim.source, pending.source)
            self._connections += 1
            self._pending.add(pending, pending.source)
            return True

    def _drop_pending(self, pending: _Pending, evicted: bool) -> None:
        """(Under _lock.) Take ``pending`` out of the pool and cut its socket: its thread ends on its own, and
        an evicted one no longer counts."""
        self._pending.discard(pending)
        if evicted:
            pending.evicted = True
            self._connections -= 1
        with contextlib.suppress(OSError):
            pending.sock.shutdown(socket.SHUT_RDWR)

    def _reap(self, now: float) -> None:
        """Cut pending connections past their deadline (the hello deadline is for the whole exchange)."""
        with self._lock:
            late = [p for p in self._pending if p.deadline <= now]
            for p in late:
                self._drop_pending(p, evicted=False)

    # --- one connection ----------------------------------------------------------------------------------
    def _serve(self, pending: _Pending, peer: tuple[Any, ...]) -> None:
        sock = pending.sock
        who = f"{peer[0]}:{peer[1]}"
        name: str | None = None
        conn: Connection | None = None
        try:
            sock.settimeout(max(0.01, pending.deadline - time.monotonic()))
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_side=True)
            conn = Connection(sock)
            name = self._login(conn, who, pending)
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
        except Exception:  # a bug: this connection only, logged to be fixed
            _LOG.exception("sync-server: %s (%s): unexpected error", who, name or "not logged in")
        finally:
            if conn is not None:
                conn.close()
            else:
                sock.close()
            with self._lock:
                if name is not None and self._active.get(name) is conn:
                    del self._active[name]
                self._pending.discard(pending)
                if not pending.evicted:
                    self._connections -= 1

    def _login(self, conn: Connection, who: str, pending: _Pending) -> str | None:
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
            wait = self._throttle.wait(pending.source, time.monotonic())
        if wait > 0:  # this address failed recently: its next try is examined only once the delay is over
            self._stop.wait(min(wait, max(0.0, pending.deadline - time.monotonic())))
        ok = (
            isinstance(token, str)
            and expected is not None
            and hmac.compare_digest(token.encode("utf-8", "surrogatepass"), expected.encode())
        )
        if not ok:
            with self._lock:
                delay = self._throttle.failed(pending.source, time.monotonic())
            _LOG.warning("sync-server: %s: authentication refused for client %r (answered in %.1f s)", who, name, delay)
            self._stop.wait(min(delay, max(0.0, pending.deadline - time.monotonic())))
            conn.send({"ok": False, "error": "authentication refused"})
            return None
        with self._lock:
            if pending.evicted or pending not in self._pending:
                raise ConnectionError("displaced or too late before logging in")
            self._pending.discard(pending)
            self._throttle.succeeded(pending.source)
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
