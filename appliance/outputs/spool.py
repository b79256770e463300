"""The on-disk spool of a durable output: a write-ahead log of the frames it has not delivered yet.

Every frame handed to a durable output is appended here first (:meth:`Spool.append`, by the reader, before any
worker can block on the network with it) and consumed once the server has it (:meth:`Spool.commit`), in order
and with its original timestamp, whether the output is healthy (milliseconds later) or back from an outage
(replayed in batches).  So ``kill -9`` at any moment loses no accepted frame: it is in the kernel.

Cheap on an SD card.  A healthy output's records are consumed within milliseconds; once everything is consumed
the segment being written is truncated to zero (kept open), which cancels its dirty pages before the kernel
writes them back: no data reaches the card.  The file system still journals the file's size and times (ext4:
about 3 MB an hour for the two durable outputs, measured by ``bench/disk_writes.py --loop``), so with ``hot``, a
directory on a RAM file system (the service uses systemd's ``RuntimeDirectory``, ``/run/teleinfo``), that
segment lives there and the card sees nothing at all.  Records that stay unconsumed for ``fsync_interval`` (an
outage, a hung server) are moved from ``hot`` to ``directory`` and fsynced there (:meth:`Spool.sync_due`), and
the spool writes to ``directory`` until it has been emptied again.  So a power cut loses at most the frames of
the last ``fsync_interval`` seconds, and ``kill -9`` none (a RAM file system outlives the process; systemd keeps
it across restarts with ``RuntimeDirectoryPreserve=yes``).

Layout of each directory::

    000000000001.spool   segments: one JSON record per line (Frame.to_record), appended with one write() each
    000000000002.spool   (numbered across both directories: the order of the numbers is the order of records)
    cursor               "<segment> <byte offset>" of the next record to replay, replaced atomically

A record cut by a power loss is skipped and counted (``corrupt``), never fatal.  The spool is bounded: past
``max_bytes`` the oldest segments are deleted and their unreplayed records counted in ``dropped``.  A crash
between a successful send and the commit resends that batch (at least once); InfluxDB deduplicates such points
(same series, same timestamp), victoria-metrics and MQTT subscribers see them twice.

Not thread-safe: the :class:`~appliance.outputs.base.OutputWorker` serialises every call under one lock, which
it never holds during a network call nor an fsync.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.tic import Frame

__all__ = ["Batch", "Spool", "encode", "fsync_paths"]

_LOG = logging.getLogger(__name__)
_SUFFIX = ".spool"
_memo: tuple[Frame | None, bytes] = (None, b"")  # the last frame encoded: every durable output spools each frame


def encode(frame: Frame) -> bytes:
    """A frame as one spool record (JSON and a newline), made once however many spools take the frame."""
    global _memo
    last, line = _memo
    if last is not frame:
        line = json.dumps(frame.to_record(), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        _memo = (frame, line)
    return line


@dataclass(frozen=True, slots=True)
class Batch:
    """Records read from the cursor on; :meth:`Spool.commit` it once they are delivered."""

    frames: list[Frame]
    end: tuple[int, int]  # (segment, offset) just after the last record read
    skipped: int = 0  # corrupt records passed over
    ends: tuple[tuple[int, int, int], ...] = ()  # per frame: segment, offset after it, corrupt records before it
    start: tuple[int, int] = (0, 0)  # the cursor when it was read


class Spool:
    """A bounded, append-only, crash-safe FIFO of frames on disk."""

    def __init__(
        self,
        directory: str | Path,
        max_bytes: int = 64 * 1024 * 1024,
        segment_bytes: int = 1024 * 1024,
        fsync_interval: float = 1.0,
        hot: str | Path | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.hot = Path(hot) if hot is not None else None
        self._made_hot = self.hot is not None and not self.hot.exists()
        self._where: dict[int, Path] = {}  # segment -> its directory, when it is not self.dir
        self._cooled = False  # writing to self.dir (records stayed): back to hot once everything is consumed
        # A spool whose every record was consumed as it came (a healthy output) removes the directory it made;
        # one that had to read records back (an outage, a previous run) leaves it, empty.
        self._made_dir = not self.dir.exists()
        self._read_back = False
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max(4096, max_bytes // 4))
        self.fsync_interval = fsync_interval
        self.dropped = 0
        self.corrupt = 0
        self._segments: list[int] = []
        self._sizes: dict[int, int] = {}
        self._cursor = (0, 0)
        self._pending = 0
        self._wfd: int | None = None
        self._wseq = 0
        self._unsynced: set[int] = set()  # segments written since their last fsync
        self._unsynced_since: float | None = None  # monotonic time of the oldest write not fsynced
        self._cursor_saved = False  # a cursor file exists (to remove once everything is consumed)
        self._warned_full = False
        try:
            self._recover()
        except OSError as e:  # unreadable directory or segment: the service must still start
            _LOG.error("spool %s cannot be read (%s): its files are left alone, new frames go after them", self.dir, e)
            self._segments, self._sizes, self._pending, self._cursor = [], {}, 0, (0, 0)
            self._wseq = int(time.time())  # numbered after any segment left there, so a later replay keeps order

    # --- state ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Records not yet replayed."""
        return self._pending

    @property
    def size(self) -> int:
        """Bytes on disk."""
        return sum(self._sizes.values())

    def _path(self, seq: int) -> Path:
        return self._where.get(seq, self.dir) / f"{seq:012d}{_SUFFIX}"

    def _dirs(self) -> list[Path]:
        return [self.dir] if self.hot is None else [self.dir, self.hot]

    def _recover(self) -> None:
        for d in self._dirs():  # self.dir first: a segment in both (a crash while it moved) is the hot one
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if p.suffix != _SUFFIX or not p.stem.isdigit():
                    continue
                seq = int(p.stem)
                self._wseq = max(self._wseq, seq)  # new segments never reuse a name, even a bad one
                if not p.is_file():
                    _LOG.error("spool %s: %s is not a file; left alone", d, p.name)
                    continue
                if seq in self._sizes:  # its copy in self.dir may be incomplete: the move had not ended
                    (self.dir / p.name).unlink()
                else:
                    self._segments.append(seq)
                self._sizes[seq] = p.stat().st_size
                if d != self.dir:
                    self._where[seq] = d
        self._segments.sort()
        if not self._segments:
            self._forget_cursors()
            return
        cursor = (self._segments[0], 0)
        for d in self._dirs():  # the furthest cursor that names a segment still there
            try:
                seq_text, off_text = (d / "cursor").read_text().split()
                saved = (int(seq_text), int(off_text))
            except (OSError, ValueError):
                continue
            self._cursor_saved = True
            if saved[0] in self._sizes:
                # a segment truncated after a crash: the cursor cannot be past its end
                cursor = max(cursor, (saved[0], min(saved[1], self._sizes[saved[0]])))
            elif saved[0] > self._segments[-1]:  # pragma: no cover - cursor ahead of every segment: all replayed
                cursor = max(cursor, (self._segments[-1], self._sizes[self._segments[-1]]))
        self._cursor = cursor
        self._segments = [s for s in self._segments if s >= cursor[0]]
        for seq in list(self._sizes):
            if seq < cursor[0]:
                self._unlink(seq)
        self._pending = self._count_from(cursor)
        if self._pending:
            _LOG.info("spool %s: %d frames to replay from a previous run", self.dir, self._pending)
            if self._where:  # left in RAM by a killed process: to the card now, they are old
                self._cool()
                fsync_paths(self.sync_due(force=True))
            self._cooled = True  # new records join them on the card until they are all replayed
        else:
            self._clear()

    def _count_from(self, cursor: tuple[int, int]) -> int:
        """Records from ``cursor`` to the end of the spool."""
        return sum(
            self._count_in(seq, cursor[1] if seq == cursor[0] else 0) for seq in self._segments if seq >= cursor[0]
        )

    def _count_in(self, seq: int, offset: int) -> int:
        """Complete records of segment ``seq`` from byte ``offset`` on (a record cut by a crash is not one)."""
        with open(self._path(seq), "rb") as f:
            f.seek(offset)
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))

    # --- writing -------------------------------------------------------------------------------------------
    def append(self, frame: Frame) -> tuple[int, int]:
        """Add a frame at the end; return where its record ends (for :meth:`batch`).  No fsync here (the record
        is in the kernel, safe from ``kill -9``): :meth:`sync_due` does it for records that stay.  Raises OSError
        (full disk, read-only...): the caller keeps the frame.  ``hot`` failing (full, missing) is not an error:
        the spool goes on in ``directory``."""
        try:
            return self._append(frame)
        except OSError as e:
            if self.hot is None or self._cooled:
                raise
            _LOG.warning("spool %s: cannot write to %s (%s); writing to %s", self.dir, self.hot, e, self.dir)
            self._cool()
            return self._append(frame)

    def _append(self, frame: Frame) -> tuple[int, int]:
        line = encode(frame)
        if self._wfd is None or self._sizes.get(self._wseq, 0) + len(line) > self.segment_bytes:
            self._rotate()
        assert self._wfd is not None
        written = os.write(self._wfd, line)
        if written != len(line):  # a short write to a regular file means the disk is full
            try:
                os.ftruncate(self._wfd, self._sizes[self._wseq])
            except OSError:  # the cut record stays: never append after it, the next record starts a segment
                self._sizes[self._wseq] += written
                os.close(self._wfd)
                self._wfd = None
            raise OSError(errno.ENOSPC, "No space left on device (short write to the spool)")
        self._sizes[self._wseq] += written
        end = (self._wseq, self._sizes[self._wseq])
        self._pending += 1
        self._unsynced.add(self._wseq)
        if self._unsynced_since is None:
            self._unsynced_since = time.monotonic()
        if self.size > self.max_bytes:
            self._enforce_bound()
        return end

    def sync(self) -> None:
        """Move what ``hot`` holds to ``directory`` and fsync every segment written since its last fsync, now (a
        stop, a rescue)."""
        fsync_paths(self.sync_due(force=True))

    def sync_due(self, force: bool = False) -> list[Path]:
        """The segments to fsync now, forgotten as unsynced: those holding records written ``fsync_interval``
        ago or more that are still unconsumed (every unsynced one with ``force``), moved out of ``hot`` first.
        Records consumed meanwhile need none (a healthy output's: their segment was truncated).  The caller
        fsyncs them, outside its lock: :func:`fsync_paths`."""
        since = self._unsynced_since
        due = since is not None and self._pending > 0 and time.monotonic() - since >= self.fsync_interval
        if not (force or due):
            return []
        if self._where and self._pending:
            self._cool()
        paths = [self._path(seq) for seq in sorted(self._unsynced) if seq in self._sizes]
        self._unsynced.clear()
        self._unsynced_since = None
        return paths

    def _cool(self) -> None:
        """Records stay: move every segment out of ``hot`` into ``directory`` (copied, then the RAM copy removed:
        a crash in between leaves both, and recovery keeps the RAM one), and write there from now on."""
        self._cooled = True
        self.dir.mkdir(parents=True, exist_ok=True)
        for seq in sorted(self._where):
            src = self._path(seq)
            dst = self.dir / src.name
            data = src.read_bytes()
            with open(dst, "wb") as f:
                f.write(data)
            if seq == self._wseq and self._wfd is not None:
                os.close(self._wfd)
                self._wfd = os.open(dst, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            del self._where[seq]
            src.unlink()
            self._unsynced.add(seq)
        if self._cursor_saved:
            self._save_cursor()

    def sync_if_due(self) -> None:
        """fsync what :meth:`sync_due` says, in the caller's thread."""
        fsync_paths(self.sync_due())

    def _rotate(self) -> None:
        if self._wfd is not None:  # fsynced by path later, if its records stay (sync_due)
            os.close(self._wfd)
            self._wfd = None
        where = self.hot if self.hot is not None and not self._cooled else self.dir
        where.mkdir(parents=True, exist_ok=True)
        seq = self._wseq + 1  # the highest name seen or made so far, plus one
        # Opened before it is registered: a failed open (full or read-only disk) leaves no phantom segment.
        fd = os.open(where / f"{seq:012d}{_SUFFIX}", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        if not self._segments:
            self._cursor = (seq, 0)
        self._wseq, self._wfd = seq, fd
        self._segments.append(seq)
        self._sizes[seq] = 0
        if where != self.dir:
            self._where[seq] = where

    def _enforce_bound(self) -> None:
        while self.size > self.max_bytes and len(self._segments) > 1:
            seq = self._segments[0]
            lost = self._count_in(seq, self._cursor[1] if self._cursor[0] == seq else 0)
            self._segments.pop(0)
            self._unlink(seq)
            self._cursor = (self._segments[0], 0)
            self._pending -= lost
            self.dropped += lost
            self._save_cursor()
            if not self._warned_full:  # once per outage; the count is in `dropped`
                self._warned_full = True
                _LOG.warning("spool %s is full (%d bytes): dropping the oldest frames", self.dir, self.max_bytes)

    # --- reading -------------------------------------------------------------------------------------------
    def batch(self, frames: list[Frame], ends: list[tuple[int, int]]) -> Batch:
        """The batch of the next ``frames`` from the cursor on, as :meth:`peek` would read them, from frames the
        caller kept in memory with the positions :meth:`append` returned (no reading back, no parsing)."""
        return Batch(frames, ends[-1], 0, tuple((seq, off, 0) for seq, off in ends), self._cursor)

    def peek(self, n: int) -> Batch:
        """Up to ``n`` frames from the cursor, in order, without consuming them."""
        self._read_back = True
        frames: list[Frame] = []
        ends: list[tuple[int, int, int]] = []
        skipped = 0
        if self._segments and self._cursor[0] not in self._sizes:
            self._resync()
        start = seq, off = self._cursor
        idx = self._segments.index(seq) if seq in self._segments else len(self._segments)
        while len(frames) < n and idx < len(self._segments):
            seq = self._segments[idx]
            with open(self._path(seq), "rb") as f:
                f.seek(off)
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # being written right now (same process) or cut by a crash: not a record yet
                    off += len(line)
                    try:
                        frames.append(Frame.from_record(json.loads(line)))
                        ends.append((seq, off, skipped))
                    except (ValueError, KeyError, TypeError):
                        skipped += 1
                    if len(frames) >= n:
                        break
            if len(frames) >= n or idx == len(self._segments) - 1:
                break
            idx += 1
            off = 0
        return Batch(frames, (seq, off), skipped, tuple(ends), start)

    def commit(self, batch: Batch, count: int | None = None, keep: bool = False) -> None:
        """The batch (or its first ``count`` frames) was delivered: move the cursor past it, delete replayed
        segments.  ``keep``: when that empties the spool, truncate the segment being written and keep it for
        the next records (a healthy output's flow) instead of deleting it."""
        if count is None or count >= len(batch.frames):
            consumed, corrupt, (seq, off) = len(batch.frames) + batch.skipped, batch.skipped, batch.end
        elif count <= 0:
            return
        else:
            seq, off, corrupt = batch.ends[count - 1]
            consumed = count + corrupt
        if batch.start != self._cursor:  # the bound dropped the oldest records meanwhile (counted as dropped)
            self._cursor = max(self._cursor, (seq, off))
            self._resync()
            seq, off = self._cursor
        else:
            self._pending = max(0, self._pending - consumed)
            self.corrupt += corrupt
        while self._segments and self._segments[0] < seq:
            self._unlink(self._segments.pop(0))
        self._cursor = (seq, off)
        if self._pending == 0:
            self._clear(keep)
        else:
            self._save_cursor()

    def _resync(self) -> None:
        """Put the cursor on an existing segment and recount the records from it (rare: see :meth:`commit`)."""
        if self._segments and self._cursor < (self._segments[0], 0):
            self._cursor = (self._segments[0], 0)
        self._pending = self._count_from(self._cursor)

    def _save_cursor(self) -> None:
        """Where the records are: in ``hot`` while they are there (a RAM write), else in ``directory``."""
        d = self.hot if self.hot is not None and not self._cooled else self.dir
        tmp = d / "cursor.tmp"
        tmp.write_text(f"{self._cursor[0]} {self._cursor[1]}\n")
        os.replace(tmp, d / "cursor")
        self._cursor_saved = True

    def _forget_cursors(self) -> None:
        for d in self._dirs():
            for name in ("cursor", "cursor.tmp"):
                try:
                    (d / name).unlink()
                except FileNotFoundError:
                    pass
        self._cursor_saved = False

    def _unlink(self, seq: int) -> None:
        path = self._path(seq)
        self._where.pop(seq, None)
        self._sizes.pop(seq, None)
        self._unsynced.discard(seq)
        if seq == self._wseq and self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def _clear(self, keep: bool = False) -> None:
        """Everything consumed: every file goes.  With ``keep`` (a healthy output's records, consumed as they
        come), the segment being written is truncated to zero and kept open instead: one ``ftruncate``, its dirty
        pages cancelled before the kernel writes them back, no file created and deleted for every frame."""
        if self._cursor_saved:  # first: a cursor past the end of a truncated segment would skip new records
            self._forget_cursors()
        if keep and not self._cooled and self._segments == [self._wseq] and self._wfd is not None:
            os.ftruncate(self._wfd, 0)
            self._sizes[self._wseq] = 0
        else:
            for seq in list(self._segments):
                self._unlink(seq)
            self._segments.clear()
            self._sizes.clear()
        self._unsynced.clear()
        self._unsynced_since = None
        self._cooled = False  # the next records go to hot again
        self._cursor = (self._wseq, 0)
        self._warned_full = False

    def close(self) -> None:
        """fsync what is kept (moved out of ``hot`` first) and close; a spool that keeps nothing leaves no file
        behind (nor its directories, when it made them, ``directory`` only if it never had to read a record
        back)."""
        try:
            if self._pending:
                self.sync()  # out of hot too: a RAM file system does not outlive a reboot
            else:
                self._clear()
                for seq in list(self._segments):
                    self._unlink(seq)
                self._segments.clear()
                made = [(self.dir, self._made_dir and not self._read_back), (self.hot, self._made_hot)]
                for d, remove in made:
                    if d is not None and remove:
                        try:
                            d.rmdir()
                        except OSError:  # not empty (someone else's file), or already gone
                            pass
        finally:
            if self._wfd is not None:
                os.close(self._wfd)
                self._wfd = None


def fsync_paths(paths: list[Path]) -> None:
    """fsync each file (opened read-only: fsync flushes the file, whatever the descriptor); a file removed
    meanwhile needs none.  Raises OSError for any other failure (a dying card)."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
