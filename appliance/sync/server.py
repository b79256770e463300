"""``teleinfo sync-server``: receives every client's tree into ``<root>/<client>/`` (``docs/SYNC.md``).

Confinement does not rely on string checks alone.  Paths are validated (:func:`check_path`), then every
file-system call goes through directory file descriptors opened one component at a time with ``O_NOFOLLOW``
from the client's own root, so a symlink anywhere in the server's tree (planted by an administrator, or a race)
is refused instead of followed, and no path string ever reaches ``open()`` whole.  Only regular files and
directories are ever created; anything else found in a tree is refused and never read.

Uploads land in ``<root>/.partial/<client>/`` and are renamed into the tree only once their sha256 matches the
client's: a reader of the tree never sees half a file, and an interrupted upload (client or server killed, link
lost) stays there to be resumed: the server offers its length and the hash of what it holds, the client checks
that hash against its own file's prefix and sends only the rest.

One thread per connection (a handful of appliances per household or a small fleet), at most
``max_connections``; every socket has a timeout, so a silent or vanished peer (abrupt disconnect) frees its
thread; a client that logs in again supersedes its previous connection at once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import logging
import os
import socket
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from appliance.errors import ApplianceError
from appliance.sync.config import SyncServerConfig
from appliance.sync.protocol import CHUNK, READ_FLAGS, VERSION, Connection, ProtocolError, check_name, check_path

__all__ = ["Refused", "SyncServer", "load_tokens"]

_LOG = logging.getLogger(__name__)

HELLO_TIMEOUT: Final = 10.0  # seconds a new connection has to log in
AUTH_FAIL_DELAY: Final = 0.5  # seconds before answering a wrong token: slows guessing
PARTIAL: Final = ".partial"
MAX_PARTIAL: Final = 8  # interrupted uploads kept per client besides the current one
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(ApplianceError):
    """A request refused for its content (bad path, too big, symlink...): answered, logged, connection kept."""


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


class _Tree:
    """One client's tree, reached only through directory descriptors (see the module docstring)."""

    def __init__(self, root: Path, partial: Path, max_files: int) -> None:
        self.root = root
        self.partial = partial
        self.max_files = max_files
        self.hashes: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime_ns) -> sha256
        self.usage = 0
        self.entries = 0

    @contextlib.contextmanager
    def dir_fd(self, parts: tuple[str, ...], create: bool = False) -> Iterator[int]:
        """A descriptor of the directory ``parts`` under the root, every component opened with O_NOFOLLOW."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts:
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    self._count(1)
                    os.mkdir(part, 0o750, dir_fd=fd)
                    self.entries += 1
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise Refused(f"{part!r} is not a directory (symlinks are never followed)") from None
                    raise
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    def _count(self, n: int) -> None:
        if self.entries + n > self.max_files:
            raise Refused(f"too many files (max_files = {self.max_files})")

    def lstat(self, parts: tuple[str, ...]) -> os.stat_result | None:
        try:
            with self.dir_fd(parts[:-1]) as d:
                return os.stat(parts[-1], dir_fd=d, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def scan(self) -> tuple[dict[str, list[Any]], list[str], list[str]]:
        """Files (path -> [size, sha256]), directories, and what was skipped (neither file nor directory)."""
        files: dict[str, list[Any]] = {}
        dirs: list[str] = []
        skipped: list[str] = []
        usage = 0
        for top, dnames, fnames, dfd in os.fwalk(self.root, follow_symlinks=False):
            rel = os.path.relpath(top, self.root)
            prefix = "" if rel == "." else rel + "/"
            for name in list(dnames):
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    dnames.remove(name)  # a symlink to a directory: never followed
                    skipped.append(prefix + name)
                    continue
                dirs.append(prefix + name)
            for name in fnames:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    skipped.append(prefix + name)
                    continue
                files[prefix + name] = [st.st_size, self._hash(prefix + name, name, dfd, st)]
                usage += st.st_size
        self.usage = usage
        self.entries = len(files) + len(dirs)
        return files, dirs, skipped

    def _hash(self, rel: str, name: str, dfd: int, st: os.stat_result) -> str:
        key = (rel, st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self.hashes.get(key)
        if cached is None:
            fd = os.open(name, READ_FLAGS, dir_fd=dfd)
            with os.fdopen(fd, "rb") as f:
                cached = hashlib.file_digest(f, "sha256").hexdigest()
            self.hashes[key] = cached
        return cached

    def prune_partial(self, keep: Path) -> int:
        """Forget the oldest interrupted uploads beyond :data:`MAX_PARTIAL` (a well-behaved client has one at a
        time, plus those of files it deleted meanwhile); return the bytes the others hold, which count against
        the quota so that abandoned uploads cannot fill the disk."""
        entries = []
        for p in self.partial.iterdir():
            if p == keep:
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime, st.st_size, p))
        entries.sort()
        while len(entries) > MAX_PARTIAL:
            _, _, p = entries.pop(0)
            p.unlink(missing_ok=True)
        return sum(size for _, size, _ in entries)

    def staging(self, rel: str) -> Path:
        return self.partial / hashlib.sha256(rel.encode("utf-8", "surrogatepass")).hexdigest()[:40]


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
        self._trees: dict[str, _Tree] = {}
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

    def _tree(self, name: str) -> _Tree:
        tree = self._trees.get(name)
        if tree is None:
            root = self.root / name
            partial = self.root / PARTIAL / name
            for d in (root, partial):
                d.mkdir(parents=True, exist_ok=True)
                if not stat.S_ISDIR(os.lstat(d).st_mode):
                    raise OSError(f"{d} is not a directory")
            tree = _Tree(root, partial, self.cfg.max_files)
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

    def _dispatch(self, conn: Connection, tree: _Tree, op: object, msg: dict[str, Any]) -> dict[str, Any] | None:
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
            self._delete(tree, parts)
            return {"ok": True}
        if op == "rename":
            return self._rename(tree, check_path(msg.get("src")), check_path(msg.get("dst")))
        if op == "put":
            return self._put(conn, tree, msg)
        raise ProtocolError(f"unknown operation {str(op)[:40]!r}")

    # --- operations --------------------------------------------------------------------------------------
    def _delete(self, tree: _Tree, parts: tuple[str, ...]) -> None:
        with contextlib.suppress(FileNotFoundError):
            tree.staging("/".join(parts)).unlink()
        try:
            with tree.dir_fd(parts[:-1]) as d:
                st = os.stat(parts[-1], dir_fd=d, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    self._rmtree(tree, d, parts[-1])
                else:  # a file, or anything else found in the tree: unlinking never follows a link
                    os.unlink(parts[-1], dir_fd=d)
                    tree.usage -= st.st_size if stat.S_ISREG(st.st_mode) else 0
                    tree.entries -= 1
        except (FileNotFoundError, NotADirectoryError):
            return

    def _rmtree(self, tree: _Tree, parent: int, name: str) -> None:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            for entry in os.listdir(fd):
                st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    self._rmtree(tree, fd, entry)
                else:
                    os.unlink(entry, dir_fd=fd)
                    tree.usage -= st.st_size if stat.S_ISREG(st.st_mode) else 0
                    tree.entries -= 1
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=parent)
        tree.entries -= 1

    def _rename(self, tree: _Tree, src: tuple[str, ...], dst: tuple[str, ...]) -> dict[str, Any]:
        if dst[: len(src)] == src:
            raise Refused("cannot move a directory into itself")
        st = tree.lstat(src)
        if st is None:
            return {"ok": False, "error": "no such file", "missing": True}
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise Refused("only files and directories can be renamed")
        target = tree.lstat(dst)
        if target is not None and stat.S_ISDIR(target.st_mode) != stat.S_ISDIR(st.st_mode):
            self._delete(tree, dst)
        with tree.dir_fd(src[:-1]) as s, tree.dir_fd(dst[:-1], create=True) as d:
            os.rename(src[-1], dst[-1], src_dir_fd=s, dst_dir_fd=d)
        if target is not None and stat.S_ISREG(target.st_mode) and stat.S_ISREG(st.st_mode):
            tree.usage -= target.st_size
            tree.entries -= 1
        return {"ok": True}

    def _put(self, conn: Connection, tree: _Tree, msg: dict[str, Any]) -> dict[str, Any]:
        parts = check_path(msg.get("path"))
        rel = "/".join(parts)
        size = msg.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError("size must be a non-negative integer")
        if size > self.cfg.max_file_mb * 1e6:
            # The data may already be on its way: this connection cannot be trusted to stay in sync.
            raise ProtocolError(f"declared size {size} exceeds max_file_mb ({self.cfg.max_file_mb:g} MB)")
        existing = tree.lstat(parts)
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            if stat.S_ISDIR(existing.st_mode):
                raise Refused(f"{rel} is a directory on the server (delete it first)")
            raise Refused(f"{rel} is neither a file nor a directory on the server")
        old = existing.st_size if existing is not None else 0
        staging = tree.staging(rel)
        pending = tree.prune_partial(staging)
        if tree.usage - old + pending + size > self.cfg.max_tree_mb * 1e6:
            raise Refused(f"quota: the tree would exceed max_tree_mb ({self.cfg.max_tree_mb:g} MB)")
        if existing is None:
            tree._count(1)
        # What can be resumed: an interrupted upload of this path, else the current file (a file that grew).
        candidate: str | None = None
        prefix = hashlib.sha256()
        offset = 0
        fd: int | None = None
        try:
            if staging.exists() and staging.stat().st_size <= size:
                fd = os.open(staging, READ_FLAGS)
                candidate = "staging"
            elif existing is not None and 0 < existing.st_size <= size:
                with tree.dir_fd(parts[:-1]) as d:
                    fd = os.open(parts[-1], READ_FLAGS, dir_fd=d)
                candidate = "file"
            if fd is not None:
                with os.fdopen(os.dup(fd), "rb") as f:
                    while block := f.read(CHUNK):
                        prefix.update(block)
                        offset += len(block)
                offset = min(offset, size)
            conn.send({"ok": True, "offset": offset, "sha256": prefix.hexdigest()})
            data = conn.recv()
            if data.get("op") != "data":
                raise ProtocolError("expected data after put")
            start = data.get("offset")
            if start not in (0, offset):
                raise ProtocolError(f"data offset must be 0 or {offset}")
            h = prefix if start else hashlib.sha256()
            out = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
            try:
                if start and candidate == "file":
                    os.ftruncate(out, 0)
                    assert fd is not None
                    os.lseek(fd, 0, os.SEEK_SET)
                    left = start
                    while left:
                        block = os.read(fd, min(CHUNK, left))
                        if not block:
                            raise Refused(f"{rel} shrank on the server during the upload")
                        os.write(out, block)
                        left -= len(block)
                else:
                    os.ftruncate(out, start)
                os.lseek(out, start, os.SEEK_SET)
                left = size - start
                while left:
                    block = conn.recv_some(left)
                    os.write(out, block)  # unbuffered: what arrived survives a kill of this process
                    h.update(block)
                    left -= len(block)
                os.fsync(out)
            finally:
                os.close(out)
        finally:
            if fd is not None:
                os.close(fd)
        commit = conn.recv()
        if commit.get("op") != "commit":
            raise ProtocolError("expected commit after the data")
        if commit.get("sha256") != h.hexdigest():
            staging.unlink()
            raise Refused(f"{rel}: sha256 mismatch, upload discarded")
        with tree.dir_fd(parts[:-1], create=True) as d:
            partial_fd = os.open(tree.partial, _DIR_FLAGS)
            try:
                os.rename(staging.name, parts[-1], src_dir_fd=partial_fd, dst_dir_fd=d)
            finally:
                os.close(partial_fd)
            os.fsync(d)
        tree.usage += size - old
        if existing is None:
            tree.entries += 1
        return {"ok": True, "sha256": h.hexdigest()}
