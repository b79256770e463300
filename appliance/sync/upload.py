"""Receiving one file into a client's tree: resumed where it stopped, hashed, and renamed into place only whole.

Uploads land in ``<root>/.partial/<client>/`` and are renamed into the tree only once their sha256 matches the
client's: a reader of the tree never sees half a file, and an interrupted upload (client or server killed, link
lost, disk full) stays there to be resumed: the server offers its length and the hash of what it holds, the client
checks that hash against its own file's prefix and sends only the rest.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any

from appliance.sync.config import SyncServerConfig
from appliance.sync.protocol import CHUNK, READ_FLAGS, Connection, ProtocolError, check_path
from appliance.sync.tree import DIR_FLAGS, Refused, Tree

__all__ = ["receive"]


def receive(cfg: SyncServerConfig, conn: Connection, tree: Tree, msg: dict[str, Any]) -> dict[str, Any]:
    """Serve a ``put`` request (``msg``) to its end: the reply to its commit."""
    parts = check_path(msg.get("path"))
    rel = "/".join(parts)
    size = msg.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError("size must be a non-negative integer")
    if size > cfg.max_file_mb * 1e6:
        # The data may already be on its way: this connection cannot be trusted to stay in sync.
        raise ProtocolError(f"declared size {size} exceeds max_file_mb ({cfg.max_file_mb:g} MB)")
    existing = tree.lstat(parts)
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        if stat.S_ISDIR(existing.st_mode):
            raise Refused(f"{rel} is a directory on the server (delete it first)")
        raise Refused(f"{rel} is neither a file nor a directory on the server")
    old = existing.st_size if existing is not None else 0
    staging = tree.staging(rel)
    pending = tree.prune_partial(staging)
    if tree.usage - old + pending + size > cfg.max_tree_mb * 1e6:
        raise Refused(f"quota: the tree would exceed max_tree_mb ({cfg.max_tree_mb:g} MB)")
    if existing is None:
        tree.reserve(1)
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
        if not isinstance(start, int) or isinstance(start, bool) or start not in (0, offset):
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
        partial_fd = os.open(tree.partial, DIR_FLAGS)
        try:
            os.rename(staging.name, parts[-1], src_dir_fd=partial_fd, dst_dir_fd=d)
        finally:
            os.close(partial_fd)
        os.fsync(d)
    tree.usage += size - old
    if existing is None:
        tree.entries += 1
    return {"ok": True, "sha256": h.hexdigest()}
