"""The raw capture journal: the meter's bytes exactly as read, each chunk with its reception time.

Why raw bytes rather than decoded frames: a decoder fix, a new label or a new output can be applied to the past
(``teleinfo replay``), and a capture is the best bug report.  Why the reception time per chunk: the service
stamps every frame it decodes from a read with that read's time, and that stamp becomes the point's time when
the meter gives no trustworthy DATE (historique mode always), so a replay that feeds the same chunks to a
fresh decoder with the same stamps gives the very same points.

SD cards wear with every small write, so :meth:`Journal.append` only appends to a list in memory (the reader
never waits on the disk); a thread writes what piled up once per ``flush_interval`` seconds or as soon as
``flush_kb`` is buffered, in one ``write`` call.  If the disk cannot be written, chunks stay in memory up to
``buffer_max_mb`` (the oldest are dropped beyond it, counted) and the write is retried every ``flush_interval``
(at most :data:`RETRY_S`), never in a loop; a write that failed leaves nothing behind (no torn member, no empty
segment), so ``teleinfo replay`` reads the directory as it is.  What is still unwritten when the service stops
is written then, or its loss is logged with the count.  ``buffered_bytes`` in ``/status`` follows the buffer
as it grows (refreshed at most every second by :meth:`Journal.append`), not only at flushes.

On-disk format (``docs/SYNC.md`` section 5 has it for other implementations).  A segment is a file
``tic-<UTC start>-<session>-<seq>.gz`` holding gzip members, one per flush, each starting on a record
boundary: ``zcat`` reads it, a torn last member (power cut during a write) loses that flush only, and an open
segment is always readable.  The decompressed stream is a sequence of records::

    kind (1 byte) | time (float64, POSIX seconds, big-endian) | length (uint32, big-endian) | payload

``H``: the segment header, JSON (``format``, ``version``, ``mode``: the decoder's configured mode,
``session``: random id of one journal run, ``seq``: segment number in the session, from 0); it is the first
record.  ``D``: a chunk of raw bytes as read, with its reception time.  Segments of one session with
consecutive ``seq`` continue each other (a frame may straddle them); a new session means the decoder started
afresh.

Segments rotate when the chunks' time enters a new ``segment_seconds`` slot (hourly by default) or the file
reaches ``segment_max_mb``; closed segments older than ``keep_days`` or beyond ``max_total_mb`` are deleted,
oldest first.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from appliance.config import opt
from appliance.errors import ApplianceError
from appliance.runtime import stop_thread
from appliance.stats import Stats

__all__ = [
    "FORMAT",
    "RECORD",
    "Journal",
    "JournalConfig",
    "JournalError",
    "Segment",
    "journal_directory",
    "read_segment",
    "segment_files",
]


@dataclass(frozen=True)
class JournalConfig:
    """Raw capture journal: the meter's bytes exactly as received, each chunk with its reception time, in
    compressed segments that "teleinfo replay" turns back into the same points.  Written in large batches (one
    write per flush) to spare the SD card."""

    enabled: bool = opt(False, "Keep the journal.")
    directory: str = opt("", 'Where segments are written ("" = journal/ in the state directory).')
    segment_seconds: int = opt(3600, "A new segment at least this often (s; 3600 = hourly).", lo=60, hi=86400)
    segment_max_mb: float = opt(16.0, "A new segment once the current one reaches this size (MB).", lo=0.01, hi=4096)
    flush_interval: float = opt(60.0, "Buffered bytes are written at least this often (s).", lo=0.05, hi=3600)
    flush_kb: int = opt(256, "...or as soon as this much is buffered (kB).", lo=1, hi=65536)
    buffer_max_mb: float = opt(
        16.0, "Memory kept while the disk cannot be written; past it the oldest chunks are dropped (MB).", lo=1, hi=1024
    )
    keep_days: float = opt(31.0, "Segments older than this are deleted (days; 0 = no age limit).", lo=0, hi=36500)
    max_total_mb: float = opt(
        512.0, "Oldest segments are deleted while the journal is bigger than this (MB).", lo=1, hi=1_000_000
    )


_LOG = logging.getLogger(__name__)

FORMAT: Final = "teleinfo-journal"
VERSION: Final = 1
RECORD: Final = struct.Struct(">cdI")
MAX_RECORD: Final = 16 * 1024 * 1024  # a payload longer than this is corruption, not a chunk of a serial port
RETRY_S: Final = 10.0  # seconds between two attempts while the disk refuses writes (flush_interval if shorter)
STATS_EVERY: Final = 1.0  # seconds between two refreshes of the journal's counters in the stats by append()
SEGMENT_NAME: Final = re.compile(r"^tic-\d{8}T\d{6}Z-[0-9a-f]{8}-\d{4,}\.gz$")


class JournalError(ApplianceError):
    """A segment that is not a journal segment at all (wrong format, no header)."""


def journal_directory(cfg: JournalConfig, state_directory: str) -> Path:
    """Where the segments are: ``journal.directory``, else ``journal/`` in the state directory."""
    return Path(cfg.directory) if cfg.directory else Path(state_directory) / "journal"


def segment_files(directory: Path) -> list[Path]:
    """The journal's segments in ``directory``, oldest first (names sort by start time)."""
    try:
        return sorted(p for p in directory.iterdir() if SEGMENT_NAME.match(p.name) and p.is_file())
    except FileNotFoundError:
        return []


def _record(kind: bytes, t: float, payload: bytes) -> bytes:
    return RECORD.pack(kind, t, len(payload)) + payload


@dataclass
class Segment:
    """A decoded segment: its header, its chunks, and whether its tail was torn (lost on a power cut)."""

    path: Path
    mode: str
    session: str
    seq: int
    chunks: list[tuple[float, bytes]]
    truncated: bool = False


def _members(data: bytes) -> Iterator[tuple[bytes, bool]]:
    """The decompressed gzip members of ``data``, each with whether it was complete."""
    pos = 0
    while pos < len(data):
        d = zlib.decompressobj(wbits=31)
        try:
            out = d.decompress(data[pos:])
        except zlib.error:
            yield b"", False
            return
        if not d.eof:
            yield out, False
            return
        yield out, True
        consumed = len(data) - pos - len(d.unused_data)
        pos += consumed


def read_segment(path: Path) -> Segment:
    """Decode a segment; a torn last member is dropped and reported (``truncated``), never an exception.

    Raises :class:`JournalError` when the file is not a journal segment, OSError when it cannot be read.
    """
    data = path.read_bytes()
    header: dict[str, object] | None = None
    chunks: list[tuple[float, bytes]] = []
    truncated = False
    for stream, complete in _members(data):
        if not complete:
            truncated = True
            break
        pos = 0
        while pos < len(stream):
            if len(stream) - pos < RECORD.size:
                truncated = True
                break
            kind, t, n = RECORD.unpack_from(stream, pos)
            pos += RECORD.size
            if n > MAX_RECORD or pos + n > len(stream):
                truncated = True
                break
            payload = stream[pos : pos + n]
            pos += n
            if kind == b"H" and header is None:
                try:
                    header = json.loads(payload)
                except ValueError:
                    raise JournalError(f"{path}: unreadable header") from None
            elif kind == b"D" and header is not None:
                chunks.append((t, payload))
        if header is None:
            break
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise JournalError(f"{path}: not a {FORMAT} segment")
    if header.get("version") != VERSION:
        raise JournalError(f"{path}: journal format version {header.get('version')!r} (this teleinfo reads {VERSION})")
    return Segment(
        path=path,
        mode=str(header.get("mode", "auto")),
        session=str(header.get("session", "")),
        seq=int(str(header.get("seq", 0))),
        chunks=chunks,
        truncated=truncated,
    )


class Journal:
    """Appends raw chunks to rotated, compressed segments, in batches, from a thread of its own."""

    def __init__(self, cfg: JournalConfig, directory: Path, mode: str, stats: Stats | None = None) -> None:
        self.cfg = cfg
        self._stats = stats
        self.directory = directory
        self.mode = mode
        self.session = secrets.token_hex(4)
        self.dropped = 0  # chunks dropped because the disk could not take them in time
        self.written = 0  # chunks on disk
        self.segments = 0  # segments opened by this journal
        self.last_error: str | None = None
        self._seq = -1
        self._flush_bytes = cfg.flush_kb * 1024
        self._max_buffer = int(cfg.buffer_max_mb * 1e6)
        self._max_segment = int(cfg.segment_max_mb * 1e6)
        self._buffer: deque[tuple[float, bytes]] = deque()
        self._buffered = 0
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._closing = False
        self._published = 0.0  # monotonic time the counters were last copied to the stats
        self._path: Path | None = None  # the open segment
        self._slot = 0
        self._size = 0
        self._thread = threading.Thread(target=self._run, name="journal", daemon=True)

    # --- the reader's side -------------------------------------------------------------------------------
    def append(self, data: bytes, t: float) -> None:
        """Keep ``data`` read at ``t``; a list append under a lock: never touches the disk."""
        with self._cond:
            self._buffer.append((t, data))
            self._buffered += len(data)
            while self._buffered > self._max_buffer and len(self._buffer) > 1:
                _, old = self._buffer.popleft()
                self._buffered -= len(old)
                self.dropped += 1
            if self._buffered >= self._flush_bytes:
                self._cond.notify()
        now = time.monotonic()
        if self._stats is not None and now - self._published >= STATS_EVERY:
            self._publish(now)

    def _publish(self, now: float) -> None:
        self._published = now
        if self._stats is not None:
            self._stats.set_extra("journal", self.snapshot())

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def request_close(self) -> None:
        """Start stopping: the thread writes what is buffered, then ends (:meth:`close` waits for it)."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def close(self, timeout: float = 2.0) -> bool:
        """Write what is buffered and stop the thread (the segment stays, closed); True when it ended in time.
        What could not be written is logged by the thread with its count."""
        self.request_close()
        if self._thread.ident is None:  # never started: nothing would write the buffer
            self._final_word()
            return True
        return stop_thread(self._thread, timeout, "journal writer (its last write)", _LOG)

    def _run(self) -> None:
        interval = self.cfg.flush_interval
        deadline = time.monotonic() + interval
        while True:
            with self._cond:
                # The size trigger only while writes succeed: a failing disk is retried on the clock, not in a loop.
                while not self._closing and (self._buffered < self._flush_bytes or self.last_error is not None):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                closing = self._closing
            self.flush()
            deadline = time.monotonic() + (interval if self.last_error is None else min(interval, RETRY_S))
            if closing:
                self._final_word()
                return

    def _final_word(self) -> None:
        """At the stop: say what the buffer still holds, since nothing will write it now."""
        with self._cond:
            left, size = len(self._buffer), self._buffered
        if left:
            _LOG.error(
                "journal: %d chunks (%d bytes) could not be written to %s before the stop and are lost: %s",
                left,
                size,
                self.directory,
                self.last_error or "the writer stopped",
            )

    @property
    def unwritten(self) -> int:
        """Chunks in memory not yet on disk."""
        with self._cond:
            return len(self._buffer)

    # --- writing -----------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write every buffered chunk (one ``write`` per segment touched); keep them on a disk error."""
        with self._write_lock:  # the thread's periodic flush and an explicit one never interleave
            self._flush()

    def _flush(self) -> None:
        with self._cond:
            batch = list(self._buffer)
            dropped_before = self.dropped
        if not batch:
            return
        done = 0
        try:
            while done < len(batch):
                done += self._write_some(batch[done:])
        except OSError as e:
            if self.last_error is None:
                _LOG.error("journal: cannot write to %s: %s (kept in memory, retried)", self.directory, e)
            self.last_error = str(e)
            self._path = None  # a torn member may be at the end of that file: continue in a new segment
        else:
            if self.last_error is not None:
                _LOG.info("journal: writing again to %s", self.directory)
            self.last_error = None
        with self._cond:
            # The batch was the buffer's head; chunks dropped meanwhile (overflow) were taken from that head.
            for _ in range(max(0, min(done - (self.dropped - dropped_before), len(self._buffer)))):
                _, data = self._buffer.popleft()
                self._buffered -= len(data)
        self.written += done
        self._publish(time.monotonic())

    def _write_some(self, batch: list[tuple[float, bytes]]) -> int:
        """Write the leading chunks of ``batch`` that belong to the current segment; return how many."""
        slot = int(batch[0][0] // self.cfg.segment_seconds)
        if self._path is None or slot != self._slot or self._size >= self._max_segment:
            self._open_segment(batch[0][0], slot)
        assert self._path is not None
        comp = zlib.compressobj(6, zlib.DEFLATED, 31)
        parts: list[bytes] = []
        if self._size == 0:
            header: dict[str, object] = {"format": FORMAT, "version": VERSION, "mode": self.mode}
            header.update(session=self.session, seq=self._seq)
            parts.append(comp.compress(_record(b"H", batch[0][0], json.dumps(header).encode())))
        n = 0
        raw = 0
        for t, data in batch:
            if n and (int(t // self.cfg.segment_seconds) != slot or self._size + raw >= self._max_segment):
                break
            parts.append(comp.compress(_record(b"D", t, data)))
            raw += len(data)
            n += 1
        parts.append(comp.flush())
        blob = b"".join(parts)
        path = self._path
        with path.open("ab") as f:
            before = f.tell()
            try:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                try:
                    f.truncate(before)
                except OSError:
                    pass
                if before == 0:
                    self._forget_segment(path)
                raise
        self._size += len(blob)
        return n

    def _forget_segment(self, path: Path) -> None:
        """Nothing of a new segment reached the disk: remove its empty file and reuse its number.

        An empty file is not a readable segment (no header), so leaving it would make ``teleinfo replay`` report
        the directory as damaged after a full disk; reusing the number keeps the sequence without a gap, so replay
        decodes the next segment as the continuation of the previous one.
        """
        try:
            path.unlink(missing_ok=True)
        except OSError:
            return
        self._seq -= 1
        self.segments -= 1

    def _open_segment(self, t: float, slot: int) -> None:
        self._seq += 1
        stamp = datetime.fromtimestamp(t, UTC).strftime("%Y%m%dT%H%M%SZ")
        self._path = self.directory / f"tic-{stamp}-{self.session}-{self._seq:04d}.gz"
        self._slot = slot
        self._size = 0
        self.segments += 1
        self.directory.mkdir(parents=True, exist_ok=True)
        self._enforce_retention()

    def _enforce_retention(self) -> None:
        """Delete the oldest closed segments beyond ``keep_days`` or ``max_total_mb`` (never the open one)."""
        files = [p for p in segment_files(self.directory) if p != self._path]
        sizes: dict[Path, int] = {}
        mtimes: dict[Path, float] = {}
        for p in files:
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            sizes[p], mtimes[p] = st.st_size, st.st_mtime
        total = sum(sizes.values())
        limit = self.cfg.max_total_mb * 1e6
        oldest_kept = time.time() - self.cfg.keep_days * 86400 if self.cfg.keep_days else None
        for p in sorted(sizes, key=lambda q: (mtimes[q], q.name)):
            if total <= limit and (oldest_kept is None or mtimes[p] >= oldest_kept):
                break
            try:
                p.unlink()
            except OSError as e:
                _LOG.warning("journal: cannot delete old segment %s: %s", p, e)
                continue
            total -= sizes[p]
            _LOG.info("journal: deleted old segment %s", p.name)

    def snapshot(self) -> dict[str, object]:
        """Counters for the status document."""
        with self._cond:
            buffered = self._buffered
        return {
            "directory": str(self.directory),
            "segment": self._path.name if self._path else None,
            "written_chunks": self.written,
            "buffered_bytes": buffered,
            "dropped_chunks": self.dropped,
            "last_error": self.last_error,
        }
