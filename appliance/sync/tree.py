"""The confinement boundary: one client's tree on the server, reached only through directory descriptors.

Paths are validated first (:func:`appliance.sync.protocol.check_path`), then every file-system call goes through
directory file descriptors opened one component at a time with ``O_NOFOLLOW`` from the client's own root, so a
symlink anywhere in the server's tree (planted by an administrator, or a race) is refused instead of followed, and
no path string ever reaches ``open()`` whole.  Only regular files and directories are ever created; anything else
found in a tree is refused and never read.  Interrupted uploads wait in ``<root>/.partial/<client>/``, bounded in
number and counted against the quota.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from appliance.errors import ApplianceError
from appliance.sync.protocol import READ_FLAGS

__all__ = ["DIR_FLAGS", "MAX_PARTIAL", "PARTIAL", "Refused", "Tree"]

PARTIAL: Final = ".partial"
MAX_PARTIAL: Final = 8  # interrupted uploads kept per client besides the current one
DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(ApplianceError):
    """A request refused for its content (bad path, too big, symlink...): answered, logged, connection kept."""


class Tree:
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
        fd = os.open(self.root, DIR_FLAGS)
        try:
            for part in parts:
                try:
                    nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    self.reserve(1)
                    os.mkdir(part, 0o750, dir_fd=fd)
                    self.entries += 1
                    nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise Refused(f"{part!r} is not a directory (symlinks are never followed)") from None
                    raise
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    def reserve(self, n: int) -> None:
        """Refuse when ``n`` more entries would exceed ``max_files``."""
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

    def delete(self, parts: tuple[str, ...]) -> None:
        """Remove a file or a whole directory; a link or a device is unlinked, never followed."""
        with contextlib.suppress(FileNotFoundError):
            self.staging("/".join(parts)).unlink()
        try:
            with self.dir_fd(parts[:-1]) as d:
                st = os.stat(parts[-1], dir_fd=d, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    self._rmtree(d, parts[-1])
                else:  # a file, or anything else found in the tree: unlinking never follows a link
                    os.unlink(parts[-1], dir_fd=d)
                    self.usage -= st.st_size if stat.S_ISREG(st.st_mode) else 0
                    self.entries -= 1
        except (FileNotFoundError, NotADirectoryError):
            return

    def _rmtree(self, parent: int, name: str) -> None:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        try:
            for entry in os.listdir(fd):
                st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    self._rmtree(fd, entry)
                else:
                    os.unlink(entry, dir_fd=fd)
                    self.usage -= st.st_size if stat.S_ISREG(st.st_mode) else 0
                    self.entries -= 1
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=parent)
        self.entries -= 1

    def rename(self, src: tuple[str, ...], dst: tuple[str, ...]) -> dict[str, Any]:
        """Move a file or a directory within the tree (the reply to send)."""
        if dst[: len(src)] == src:
            raise Refused("cannot move a directory into itself")
        st = self.lstat(src)
        if st is None:
            return {"ok": False, "error": "no such file", "missing": True}
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise Refused("only files and directories can be renamed")
        target = self.lstat(dst)
        if target is not None and stat.S_ISDIR(target.st_mode) != stat.S_ISDIR(st.st_mode):
            self.delete(dst)
        with self.dir_fd(src[:-1]) as s, self.dir_fd(dst[:-1], create=True) as d:
            os.rename(src[-1], dst[-1], src_dir_fd=s, dst_dir_fd=d)
        if target is not None and stat.S_ISREG(target.st_mode) and stat.S_ISREG(st.st_mode):
            self.usage -= target.st_size
            self.entries -= 1
        return {"ok": True}
