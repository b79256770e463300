#!/usr/bin/python3
"""The release layout, the update transaction file, and the guard that runs before every start of the service.

Standard library only, and runnable as a script: the image installs a copy as ``/usr/lib/teleinfo/update-guard``
and ``teleinfo.service`` runs it first (``ExecStartPre=+``, as root, outside the unit's sandbox), with the system's
``python3``, so a release that cannot even import still cannot stop its own rollback.

Layout (``ROOT`` is ``/`` on the device; tests use a temporary directory)::

    ROOT/opt/teleinfo/releases/<version>-<bundle id>/   one virtualenv per release, its bundle kept in bundle/,
                                                        release.json written last (a directory without it is
                                                        an interrupted install: removed)
    ROOT/opt/teleinfo/current  -> releases/<X>          the release that runs; switched by rename(2) of a symlink
    ROOT/opt/teleinfo/previous -> releases/<W>          the rollback target, set when X is committed
    ROOT/opt/teleinfo/bin      -> current/bin           what the unit and /usr/local/bin/teleinfo call
    ROOT/var/lib/teleinfo-update/transaction.json       the last install: its phase, from, to, why it ended
    ROOT/var/lib/teleinfo-update/trial-starts           one line per service start while a release is on trial
    ROOT/var/lib/teleinfo-update/history.jsonl          the last attempts, for ``teleinfo update status``
    ROOT/var/lib/teleinfo-update/lock                   flock(2)-ed by the installer for the whole transaction
    ROOT/var/lib/teleinfo-update/backup/                the configuration and units the switch replaced

Phases of ``transaction.json``: ``preparing`` (the new release is being built beside the running one: nothing of
the running system changed yet), ``switching`` (configuration, units and ``current`` are being changed),
``trial`` (the new release runs; the installer waits for READY and health ``up``), then ``committed`` or
``rolled-back``, or ``aborted`` (stopped before the switch).

The guard, at every start of the service:

* no transaction, or a finished one: nothing to do;
* an unfinished one while the installer still holds the lock: a release on trial is being started by the installer
  (or by systemd's restart after a crash): the start is counted in ``trial-starts``, which the installer reads (a
  second start during the trial is a crash and fails the trial);
* an unfinished one and nobody holds the lock: the installer is gone (killed, power cut): ``preparing`` is aborted
  (the half-built release is removed; ``current`` never moved), ``switching``/``trial`` are rolled back
  (``current`` back to the previous release, configuration and units restored).  Whatever happened, the reason
  goes to standard error, which is the service's journal.

The guard never fails the start: an unexpected error is printed and the service starts anyway.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FINISHED",
    "Lock",
    "LockBusy",
    "Paths",
    "append_history",
    "guard",
    "link_name",
    "read_json",
    "restore_backups",
    "roll_back_files",
    "set_link",
    "write_json",
]

#: Phases after which nothing is left to do.
FINISHED = frozenset({"committed", "rolled-back", "aborted"})
HISTORY_KEEP = 50


@dataclass(frozen=True)
class Paths:
    """Every path of the update machinery under one root (``/`` on the device)."""

    root: Path = Path("/")

    @classmethod
    def from_env(cls, root: str | os.PathLike[str] | None = None) -> Paths:
        """``root``, else ``$TELEINFO_ROOT``, else ``/``."""
        return cls(Path(root or os.environ.get("TELEINFO_ROOT") or "/"))

    def _under(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    @property
    def opt(self) -> Path:
        return self._under("/opt/teleinfo")

    @property
    def releases(self) -> Path:
        return self.opt / "releases"

    @property
    def current(self) -> Path:
        return self.opt / "current"

    @property
    def previous(self) -> Path:
        return self.opt / "previous"

    @property
    def bin(self) -> Path:
        return self.opt / "bin"

    @property
    def state(self) -> Path:
        return self._under("/var/lib/teleinfo-update")

    @property
    def transaction(self) -> Path:
        return self.state / "transaction.json"

    @property
    def trial_starts(self) -> Path:
        return self.state / "trial-starts"

    @property
    def history(self) -> Path:
        return self.state / "history.jsonl"

    @property
    def lock(self) -> Path:
        return self.state / "lock"

    @property
    def backup(self) -> Path:
        return self.state / "backup"

    @property
    def downloads(self) -> Path:
        return self.state / "downloads"

    @property
    def keys(self) -> Path:
        return self._under("/etc/teleinfo/update-keys")

    @property
    def config(self) -> Path:
        return self._under("/etc/teleinfo/teleinfo.toml")

    @property
    def units(self) -> Path:
        return self._under("/etc/systemd/system")

    @property
    def boot(self) -> Path:
        return self._under("/boot/firmware")

    @property
    def run(self) -> Path:
        return self._under("/run")

    @property
    def guard_script(self) -> Path:
        return self._under("/usr/lib/teleinfo/update-guard")

    def release(self, name: str) -> Path:
        return self.releases / name


# --- small durable file operations -------------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Write back everything of the file system holding ``path`` (``syncfs(2)``, else ``sync(2)``): a release's
    thousands of files reach the disk before a link names them, so a power cut after the switch never leaves
    ``current`` pointing at files whose data was still in the page cache."""
    import ctypes

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Replace ``path`` atomically and durably (temporary file, fsync, rename, fsync of the directory).  World
    readable whatever the umask: the guard runs under the service unit's ``UMask=0077``, and the service (another
    user) reads the transaction for its ``/status`` and MQTT update section."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when absent or unreadable (a torn write cannot happen: see
    :func:`write_json`; an unreadable file is treated as absent and reported by the caller)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def copy_durably(source: Path, target: Path, mode: int = 0o644) -> None:
    """Copy a small file over ``target`` atomically (temporary file, fsync, rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with source.open("rb") as src, open(tmp, "wb") as dst:
        import shutil  # imported where used: it loads bz2 and lzma, which the service's update reporter never needs

        shutil.copyfileobj(src, dst)
        dst.flush()
        os.fsync(dst.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def set_link(link: Path, target: str) -> None:
    """Point the symlink ``link`` at ``target`` atomically: a new link renamed over the old one (rename(2) is
    atomic, so a power cut leaves the old or the new link, never none)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def link_name(link: Path) -> str | None:
    """The release a ``current``/``previous`` link names (``releases/X`` -> ``X``), or None."""
    try:
        target = os.readlink(link)
    except OSError:
        return None
    return Path(target).name or None


def append_history(paths: Paths, entry: dict[str, Any]) -> None:
    """One line per finished attempt; only the last :data:`HISTORY_KEEP` are kept."""
    paths.state.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    with contextlib.suppress(OSError):
        lines = paths.history.read_text(encoding="utf-8").splitlines()
    lines = [*lines[-(HISTORY_KEEP - 1) :], json.dumps(entry, sort_keys=True)]
    tmp = paths.history.with_name(".history.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.chmod(tmp, 0o644)  # as write_json: readable whatever the umask
    os.replace(tmp, paths.history)


# --- the lock ----------------------------------------------------------------------------------------------
class LockBusy(Exception):
    """Another update holds the lock."""


class Lock:
    """flock(2) on ``state/lock``: never two updates at once; and the guard knows whether an installer is alive
    (the kernel drops the lock when its holder dies, however it dies)."""

    def __init__(self, paths: Paths) -> None:
        self._path = paths.lock
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`LockBusy` naming the holder."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockBusy(f"another update is running (pid {holder or '?'})") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    @contextlib.contextmanager
    def try_hold(self) -> Iterator[bool]:
        """Hold the lock if it is free: yields True (held) or False (an installer holds it)."""
        try:
            self.acquire()
        except LockBusy:
            yield False
            return
        try:
            yield True
        finally:
            self.release()


# --- rollback ----------------------------------------------------------------------------------------------
def restore_backups(paths: Paths, tx: dict[str, Any]) -> list[str]:
    """Put back the configuration and the units the switch replaced (recorded in ``tx``); what was done."""
    done = []
    backup = paths.backup
    if tx.get("config_replaced") and (backup / "teleinfo.toml").is_file():
        copy_durably(backup / "teleinfo.toml", paths.config, 0o640)
        with contextlib.suppress(OSError):
            import shutil

            shutil.chown(paths.config, "root", "teleinfo")
        done.append("configuration restored")
    for name, how in sorted(tx.get("units", {}).items()):
        unit = paths.units / name
        if how == "replaced" and (backup / "units" / name).is_file():
            copy_durably(backup / "units" / name, unit)
            done.append(f"{name} restored")
        elif how == "added":
            with contextlib.suppress(FileNotFoundError):
                unit.unlink()
            done.append(f"{name} removed")
    return done


def roll_back_files(paths: Paths, tx: dict[str, Any], reason: str) -> dict[str, Any]:
    """Put the previous release back on disk (no service restart: the caller's business) and finish ``tx`` as
    ``rolled-back`` with ``reason``.  Idempotent: a power cut in the middle is finished by the next guard run."""
    previous = tx.get("from")
    if previous and (paths.release(previous) / "release.json").is_file():
        if link_name(paths.current) != previous:
            set_link(paths.current, f"releases/{previous}")
    restored = restore_backups(paths, tx)
    failed = tx.get("to")
    if failed and failed != previous and link_name(paths.current) != failed:
        import shutil

        shutil.rmtree(paths.release(failed), ignore_errors=True)
    tx = {**tx, "phase": "rolled-back", "reason": reason, "ended": time.time(), "restored": restored}
    write_json(paths.transaction, tx)
    with contextlib.suppress(FileNotFoundError):
        paths.trial_starts.unlink()
    append_history(paths, _history_entry(tx))
    return tx


def abort(paths: Paths, tx: dict[str, Any], reason: str) -> dict[str, Any]:
    """Finish a transaction stopped before the switch: its half-built release is removed, nothing else changed."""
    name = tx.get("to")
    if name and link_name(paths.current) != name and link_name(paths.previous) != name:
        import shutil

        shutil.rmtree(paths.release(name), ignore_errors=True)
    tx = {**tx, "phase": "aborted", "reason": reason, "ended": time.time()}
    write_json(paths.transaction, tx)
    append_history(paths, _history_entry(tx))
    return tx


def _history_entry(tx: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "from", "to", "version", "source", "phase", "reason", "started", "ended")
    return {k: tx[k] for k in keys if k in tx}


def remove_incomplete(paths: Paths) -> list[str]:
    """Release directories without release.json (an install cut short) that nothing points at: removed."""
    removed = []
    keep = {link_name(paths.current), link_name(paths.previous)}
    with contextlib.suppress(FileNotFoundError):
        for entry in paths.releases.iterdir():
            if entry.name in keep or (entry / "release.json").is_file():
                continue
            import shutil

            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def recover(paths: Paths, why: str) -> dict[str, Any] | None:
    """With the lock held: finish an unfinished transaction whose installer is gone.  The finished transaction,
    or None when there was nothing to recover."""
    tx = read_json(paths.transaction)
    if tx is None or tx.get("phase") in FINISHED:
        return None
    phase = tx.get("phase")
    if phase == "preparing":
        return abort(paths, tx, f"interrupted before the switch ({why}); release {tx.get('from')} kept")
    return roll_back_files(
        paths,
        tx,
        f"interrupted during the {phase} of {tx.get('to')} ({why}); release {tx.get('from')} put back",
    )


def guard(paths: Paths) -> list[str]:
    """What the guard does before a start of the service (see the module's docstring); the lines it reports."""
    tx = read_json(paths.transaction)
    if tx is None or tx.get("phase") in FINISHED:
        with Lock(paths).try_hold() as held:
            removed = remove_incomplete(paths) if held else []
        return [f"removed the incomplete release {name}" for name in removed]
    with Lock(paths).try_hold() as held:
        if not held:
            if tx.get("phase") == "trial":
                with paths.trial_starts.open("a", encoding="utf-8") as f:
                    f.write(f"{time.time():.3f} {os.getpid()}\n")
                return [f"release {tx.get('to')} on trial: start counted"]
            return []
        done = recover(paths, "the installer is gone: killed, or a power cut")
        removed = remove_incomplete(paths)
    lines = [f"update {done.get('phase')}: {done.get('reason')}"] if done else []
    lines += [f"removed the incomplete release {name}" for name in removed]
    return lines


def main(argv: list[str] | None = None) -> int:
    """``update-guard [--root DIR]``: always exits 0, so the service starts whatever happens here."""
    args = sys.argv[1:] if argv is None else argv
    root = args[1] if len(args) == 2 and args[0] == "--root" else None
    try:
        for line in guard(Paths.from_env(root)):
            print(f"teleinfo-update-guard: {line}", file=sys.stderr, flush=True)
    except Exception as e:  # the service must start even if the guard is broken
        print(f"teleinfo-update-guard: error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
