"""``teleinfo sync``: mirror a directory to a sync-server, live (``docs/SYNC.md``).

On every connection the client first reconciles: it lists the server's copy (paths, sizes, sha256) and its own
tree, then sends what differs and deletes what is gone, so changes made while it was stopped or disconnected
are caught up.  Then it follows inotify events: creations, writes, renames (sent as renames: a renamed 1 GB
file costs one request) and deletions, debounced a little so that a file written in several steps is sent once.
An inotify queue overflow falls back to a full reconciliation.

Any network or protocol failure closes the connection and starts again after a capped backoff; a file whose
upload was cut resumes where the server's copy stops, once the client has checked that the server's prefix
hash matches its own file's.  Symlinks, devices and names the protocol refuses are skipped (logged), never
followed.

The server is a peer like any other: every reply is checked for the fields and types the protocol gives it
before it is used, a malformed one is a :class:`ProtocolError` (the connection is dropped and retried, never a
crash), and a listing declared larger than :data:`MAX_LISTING` bytes is refused before a byte of it is read.
A server that answers "server busy" (or anything but "authentication refused") is retried after the backoff;
only a refused login is an :class:`AuthError`.
"""

from __future__ import annotations

import hashlib
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

from appliance.errors import ApplianceError
from appliance.runtime import Backoff
from appliance.sync.protocol import (
    CHUNK,
    READ_FLAGS,
    VERSION,
    Connection,
    ProtocolError,
    check_path,
    sha256_file_prefix,
)

__all__ = ["AuthError", "SyncClient"]

_LOG = logging.getLogger(__name__)

QUIET: Final = 0.1  # seconds without inotify events before a batch is processed
MAX_BATCH_WAIT: Final = 1.0  # ...but never later than this after the first event
PING_INTERVAL: Final = 60.0  # an idle connection says it is alive this often (the server closes silent ones)
REPLY_TIMEOUT: Final = 120.0  # seconds for a reply (the server may hash a large file first)
MAX_LISTING: Final = 64 * 1024 * 1024  # bytes of a "list" payload: 100,000 files of long names fit
AUTH_REFUSED: Final = "authentication refused"


class AuthError(ApplianceError):
    """The server refused the name or token: retrying at once cannot help."""


def _error(reply: dict[str, Any]) -> str:
    """The server's reason, as one short printable line (it goes to the log)."""
    text = str(reply.get("error", "no reason given"))[:200]
    return "".join(c if c.isprintable() else "?" for c in text)


def _ok(reply: dict[str, Any], what: str) -> bool:
    if reply.get("ok") is True:
        return True
    _LOG.warning("sync: the server refused %s: %s", what, _error(reply))
    return False


def _int(reply: dict[str, Any], key: str, default: int | None = None) -> int:
    """A non-negative integer field of a reply; ProtocolError otherwise."""
    value = reply.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"bad {key!r} in the server's reply: {str(value)[:40]!r}")
    return value


def _listing(raw: bytes) -> tuple[dict[str, tuple[int, str]], set[str]]:
    """The server's ``list`` payload, checked: ``{"files": {path: [size, sha256]}, "dirs": [path]}``."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError("the listing is not JSON") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    dirs = doc.get("dirs") if isinstance(doc, dict) else None
    if not isinstance(files, dict) or not isinstance(dirs, list):
        raise ProtocolError("the listing has no files object and dirs list")
    out: dict[str, tuple[int, str]] = {}
    for path, entry in files.items():
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], int)
            or isinstance(entry[0], bool)
            or not isinstance(entry[1], str)
        ):
            raise ProtocolError(f"bad listing entry for {path[:80]!r}")
        out[path] = (entry[0], entry[1])
    if not all(isinstance(d, str) for d in dirs):
        raise ProtocolError("a directory of the listing is not a string")
    return out, set(dirs)


class SyncClient:
    """One client: a directory, a server, a name and a token."""

    def __init__(
        self,
        directory: Path,
        host: str,
        port: int,
        name: str,
        token: str,
        *,
        tls: ssl.SSLContext | None = None,
        max_backoff: float = 30.0,
        max_rate: float = 0.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.directory = directory
        self.host, self.port = host, port
        self.name, self.token = name, token
        self.tls = tls
        self.max_backoff = max_backoff
        self.max_rate = max_rate  # bytes a second sent (0: unlimited), to spare a household's uplink
        self.stop = stop or threading.Event()
        self.remote_files: dict[str, tuple[int, str]] = {}
        self.remote_dirs: set[str] = set()
        self.max_file = 0
        self._hashes: dict[tuple[int, int, int, int], str] = {}  # (inode, size, mtime_ns, ctime_ns) -> sha256
        self._inotify: Any = None
        self._watches: dict[int, str] = {}
        self._skipped: set[str] = set()
        self.uploads = 0  # files sent (counters for the log and the tests)
        self.resumed = 0

    # --- connection --------------------------------------------------------------------------------------
    def _connect(self) -> Connection:
        sock = socket.create_connection((self.host, self.port), timeout=10)
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(REPLY_TIMEOUT)
            conn = Connection(sock)
            conn.send({"op": "hello", "v": VERSION, "name": self.name, "token": self.token})
            reply = conn.recv()
        except BaseException:
            sock.close()
            raise
        if reply.get("ok") is not True:
            conn.close()
            if reply.get("error") == AUTH_REFUSED:
                raise AuthError(AUTH_REFUSED)
            raise ProtocolError(f"the server did not log us in: {_error(reply)}")  # "server busy": retried
        try:
            self.max_file = _int(reply, "max_file", 0)
        except ProtocolError:
            conn.close()
            raise
        return conn

    def run(self, once: bool = False) -> int:
        """Sync until stopped (or, with ``once``, reconcile once); returns the exit status."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not once:
            from inotify_simple import INotify  # type: ignore[import-untyped, unused-ignore]

            self._inotify = INotify()
        backoff = Backoff(0.5, self.max_backoff)
        try:
            while not self.stop.is_set():
                try:
                    conn = self._connect()
                except AuthError as e:
                    _LOG.error("sync: %s:%d refused %s: %s", self.host, self.port, self.name, e)
                    if once:
                        return 2
                    self.stop.wait(self.max_backoff)
                    continue
                except (OSError, ProtocolError) as e:
                    _LOG.warning("sync: cannot connect to %s:%d: %s", self.host, self.port, e)
                    if once:
                        return 1
                    self.stop.wait(backoff.next())
                    continue
                _LOG.info("sync: connected to %s:%d as %s", self.host, self.port, self.name)
                try:
                    if self._inotify is not None:
                        self._watch_tree("")
                    self._reconcile(conn)
                    backoff.reset()
                    if once:
                        conn.send({"op": "bye"})
                        return 0
                    self._follow(conn)
                except (OSError, ProtocolError, ValueError) as e:
                    _LOG.warning("sync: connection lost: %s", e)
                    if once:
                        return 1
                    self.stop.wait(backoff.next())
                finally:
                    conn.close()
        finally:
            if self._inotify is not None:
                self._inotify.close()
        return 0

    # --- local tree --------------------------------------------------------------------------------------
    def _usable(self, rel: str) -> bool:
        """True for names the protocol accepts (others are skipped, logged once)."""
        try:
            rel.encode("utf-8")
            check_path(rel)
        except (UnicodeEncodeError, ProtocolError) as e:
            if rel not in self._skipped:
                self._skipped.add(rel)
                _LOG.warning("sync: skipped %r: %s", rel.encode("utf-8", "surrogateescape"), e)
            return False
        return True

    def _hash(self, path: Path, st: os.stat_result) -> str:
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._hashes.get(key)
        if cached is None:
            fd = os.open(path, READ_FLAGS)
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(f"{path} is no longer a regular file")
                cached = hashlib.file_digest(f, "sha256").hexdigest()
            if len(self._hashes) > 100_000:
                self._hashes.clear()
            self._hashes[key] = cached
        return cached

    def _watch_tree(self, rel: str) -> None:
        """Watch ``rel`` and every directory below it (before reading them: nothing created meanwhile is missed)."""
        from inotify_simple import flags  # type: ignore[import-untyped, unused-ignore]

        mask = (
            flags.CREATE
            | flags.CLOSE_WRITE
            | flags.MODIFY
            | flags.MOVED_FROM
            | flags.MOVED_TO
            | flags.DELETE
            | flags.DELETE_SELF
            | flags.ONLYDIR
            | flags.DONT_FOLLOW
        )
        top = self.directory / rel if rel else self.directory
        for d, dnames, _files in os.walk(top):
            try:
                wd = self._inotify.add_watch(d, mask)
            except OSError as e:
                _LOG.warning("sync: cannot watch %s: %s", d, e)
                continue
            r = os.path.relpath(d, self.directory)
            self._watches[wd] = "" if r == "." else r
            dnames[:] = [n for n in dnames if not os.path.islink(os.path.join(d, n))]

    # --- operations --------------------------------------------------------------------------------------
    def _request(self, conn: Connection, msg: dict[str, Any]) -> dict[str, Any]:
        conn.send(msg)
        return conn.recv()

    def _forget(self, rel: str) -> None:
        self.remote_files.pop(rel, None)
        self.remote_dirs.discard(rel)
        prefix = rel + "/"
        for p in [p for p in self.remote_files if p.startswith(prefix)]:
            del self.remote_files[p]
        self.remote_dirs -= {d for d in self.remote_dirs if d.startswith(prefix)}

    def _delete(self, conn: Connection, rel: str) -> None:
        if _ok(self._request(conn, {"op": "delete", "path": rel}), f"delete {rel}"):
            self._forget(rel)

    def _mkdir(self, conn: Connection, rel: str) -> None:
        if rel in self.remote_files:
            self._delete(conn, rel)
        if _ok(self._request(conn, {"op": "mkdir", "path": rel}), f"mkdir {rel}"):
            self._add_parents(rel + "/x")

    def _add_parents(self, rel: str) -> None:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.remote_dirs.add("/".join(parts[:i]))

    def _rename(self, conn: Connection, src: str, dst: str) -> bool:
        """Rename on the server if it has ``src``; False when the caller must send ``dst`` instead."""
        if src not in self.remote_files and src not in self.remote_dirs:
            return False
        if not (self._usable(src) and self._usable(dst)):
            return False
        reply = self._request(conn, {"op": "rename", "src": src, "dst": dst})
        if not _ok(reply, f"rename {src} -> {dst}"):
            self._forget(src)
            return False
        self._forget(dst)
        moved = {p: v for p, v in self.remote_files.items() if p == src or p.startswith(src + "/")}
        dirs = {d for d in self.remote_dirs if d == src or d.startswith(src + "/")}
        self._forget(src)
        for p, v in moved.items():
            self.remote_files[dst + p[len(src) :]] = v
        self.remote_dirs |= {dst + d[len(src) :] for d in dirs}
        self._add_parents(dst)
        return True

    def _put_if_changed(self, conn: Connection, rel: str, path: Path, st: os.stat_result) -> None:
        if self.max_file and st.st_size > self.max_file:
            if rel not in self._skipped:
                self._skipped.add(rel)
                _LOG.warning("sync: skipped %s: %d bytes, over the server limit (%d)", rel, st.st_size, self.max_file)
            return
        try:
            digest = self._hash(path, st)
        except OSError as e:  # replaced or removed since it was listed: its own event follows
            _LOG.debug("sync: %s changed while being read: %s", rel, e)
            return
        if self.remote_files.get(rel) == (st.st_size, digest):
            return
        if rel in self.remote_dirs:
            self._delete(conn, rel)
        self._put(conn, rel, path)

    def _put(self, conn: Connection, rel: str, path: Path) -> None:
        try:
            fd = os.open(path, READ_FLAGS)
        except FileNotFoundError:
            return  # gone meanwhile: its deletion event follows
        with os.fdopen(fd, "rb") as f:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode):
                return  # replaced by something else since it was checked: its own event follows
            size = fst.st_size
            reply = self._request(conn, {"op": "put", "path": rel, "size": size})
            if not _ok(reply, f"put {rel}"):
                return
            offset = _int(reply, "offset", 0)
            start = 0
            h = hashlib.sha256()
            if 0 < offset <= size:
                prefix, got = sha256_file_prefix(f, offset)
                if got == offset and prefix.hexdigest() == reply.get("sha256"):  # a non-string never matches
                    start, h = offset, prefix
            if start:
                self.resumed += 1
                _LOG.info("sync: %s: resuming at byte %d of %d", rel, start, size)
            conn.send({"op": "data", "offset": start})
            f.seek(start)
            left = size - start
            began = time.monotonic()
            sent = 0
            while left:
                block = f.read(min(CHUNK, left))
                if not block:
                    raise OSError(f"{rel} shrank during its upload")  # the connection cannot continue
                conn.sock.sendall(block)
                h.update(block)
                left -= len(block)
                sent += len(block)
                if self.max_rate:
                    ahead = sent / self.max_rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
            reply = self._request(conn, {"op": "commit", "sha256": h.hexdigest()})
        if _ok(reply, f"put {rel}"):
            self.uploads += 1
            self.remote_files[rel] = (size, h.hexdigest())
            self._add_parents(rel)

    # --- reconciliation ----------------------------------------------------------------------------------
    def _reconcile(self, conn: Connection) -> None:
        """Make the server's copy identical to the local tree (the full scan done on every connection)."""
        reply = self._request(conn, {"op": "list"})
        if reply.get("ok") is not True:
            raise ProtocolError(f"list failed: {_error(reply)}")
        size = _int(reply, "size")
        if size > MAX_LISTING:
            raise ProtocolError(f"the server declared a listing of {size} bytes (at most {MAX_LISTING})")
        self.remote_files, self.remote_dirs = _listing(conn.recv_exact(size))
        local_files: dict[str, tuple[Path, os.stat_result]] = {}
        local_dirs: set[str] = set()
        for top, dnames, fnames in os.walk(self.directory):
            rel_top = os.path.relpath(top, self.directory)
            prefix = "" if rel_top == "." else rel_top + "/"
            keep = []
            for n in dnames:
                p = Path(top) / n
                if p.is_symlink() or not self._usable(prefix + n):
                    continue
                keep.append(n)
                local_dirs.add(prefix + n)
            dnames[:] = keep
            for n in fnames:
                p = Path(top) / n
                try:
                    st = p.lstat()
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode) and self._usable(prefix + n):
                    local_files[prefix + n] = (p, st)
        for d in sorted(local_dirs):
            if d not in self.remote_dirs:
                self._mkdir(conn, d)
        for rel, (p, st) in sorted(local_files.items()):
            self._put_if_changed(conn, rel, p, st)
        for rel in sorted(set(self.remote_files) - set(local_files)):
            if rel in self.remote_files:
                self._delete(conn, rel)
        for d in sorted(self.remote_dirs - local_dirs, reverse=True):
            if d in self.remote_dirs:
                self._delete(conn, d)
        _LOG.info("sync: %s in step: %d files, %d directories", self.directory, len(local_files), len(local_dirs))

    def _sync_path(self, conn: Connection, rel: str) -> None:
        """Bring one path (and, for a directory, what is below it) in step with the local tree."""
        if not self._usable(rel):
            return
        path = self.directory / rel
        try:
            st = path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is None or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            if rel in self.remote_files or rel in self.remote_dirs:
                self._delete(conn, rel)
            return
        if stat.S_ISREG(st.st_mode):
            self._put_if_changed(conn, rel, path, st)
            return
        if rel not in self.remote_dirs:
            self._mkdir(conn, rel)
        try:
            children = set(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return
        for child in sorted(children):
            self._sync_path(conn, f"{rel}/{child}")
        prefix = rel + "/"
        gone = {p[len(prefix) :].split("/")[0] for p in [*self.remote_files, *self.remote_dirs] if p.startswith(prefix)}
        for child in sorted(gone - children):
            self._delete(conn, prefix + child)

    # --- live --------------------------------------------------------------------------------------------
    def _follow(self, conn: Connection) -> None:
        """Apply inotify events until stopped; raises on a connection failure."""
        from inotify_simple import flags  # type: ignore[import-untyped, unused-ignore]

        last_sent = time.monotonic()
        while not self.stop.is_set():
            events = self._inotify.read(timeout=500)
            if not events:
                if time.monotonic() - last_sent > PING_INTERVAL:
                    if self._request(conn, {"op": "ping"}).get("ok") is not True:
                        raise ProtocolError("ping refused")
                    last_sent = time.monotonic()
                continue
            first = time.monotonic()
            while time.monotonic() - first < MAX_BATCH_WAIT:
                more = self._inotify.read(timeout=int(QUIET * 1000))
                if not more:
                    break
                events.extend(more)
            dirty: set[str] = set()
            moved: dict[int, str] = {}
            renames: list[tuple[str, str]] = []
            overflow = False
            for ev in events:
                if ev.mask & flags.Q_OVERFLOW:
                    overflow = True
                    continue
                base = self._watches.get(ev.wd)
                if base is None:
                    continue
                if ev.mask & flags.IGNORED:
                    del self._watches[ev.wd]
                    continue
                if not ev.name:
                    continue  # DELETE_SELF: the parent's DELETE says it
                rel = f"{base}/{ev.name}" if base else ev.name
                if ev.mask & flags.MOVED_FROM:
                    moved[ev.cookie] = rel
                    continue
                if ev.mask & flags.MOVED_TO and ev.cookie in moved:
                    renames.append((moved.pop(ev.cookie), rel))
                if ev.mask & flags.ISDIR and ev.mask & (flags.CREATE | flags.MOVED_TO):
                    self._watch_tree(rel)
                dirty.add(rel)
            for rel in moved.values():  # moved out of the tree: deleted here, and no longer watched
                self._unwatch(rel)
                dirty.add(rel)
            if overflow:
                _LOG.warning("sync: inotify queue overflow: full reconciliation")
                self._reconcile(conn)
            else:
                for src, dst in renames:
                    if self._rename(conn, src, dst):
                        self._rewatch(src, dst)
                        dirty.add(src)
                for rel in sorted(dirty):
                    self._sync_path(conn, rel)
            last_sent = time.monotonic()

    def _unwatch(self, rel: str) -> None:
        for wd, path in list(self._watches.items()):
            if path == rel or path.startswith(rel + "/"):
                del self._watches[wd]
                try:
                    self._inotify.rm_watch(wd)
                except OSError:
                    pass  # already gone with its directory

    def _rewatch(self, src: str, dst: str) -> None:
        """A directory moved inside the tree keeps its watches: only their paths change."""
        for wd, path in list(self._watches.items()):
            if path == src or path.startswith(src + "/"):
                self._watches[wd] = dst + path[len(src) :]
