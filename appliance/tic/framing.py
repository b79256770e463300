"""Cutting a raw TIC byte stream into frames (STX ... ETX), whatever size the chunks come in.

docs/PROTOCOL.md §2: a frame is STX (0x02), the groups, ETX (0x03).  EOT (0x04) means the meter interrupted the
frame (remote reading, CBETM long/short switch) and will start over with STX; such a frame is dropped.  A new
STX before ETX also means the previous frame was cut.  Everything before the first STX is skipped: every real
capture starts mid-frame (docs/PROTOCOL.md §10.5).  Bytes are masked to 7 bits first, so a 7E1 line read as 8N1 (parity
in bit 7, docs/PROTOCOL.md §10.6) decodes the same.

Memory is bounded: a frame longer than ``max_frame`` bytes is dropped as an overflow and the assembler waits
for the next STX, so an endless stream with no ETX (or a flood of LF) holds at most ``max_frame`` bytes.  The
largest real frame (standard, three-phase, producer, with PJOURF+1, PPOINTE and MSG1) is about 1.7 kB; the
default of 4 kB leaves room without letting garbage pile up.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MASK_7BIT", "FrameAssembler", "FramingStats"]

MASK_7BIT = bytes(i & 0x7F for i in range(256))
DEFAULT_MAX_FRAME = 4096


def _next_control(data: bytes, pos: int, end: int) -> int:
    """Index of the first STX, ETX or EOT in ``data[pos:end]``, else ``end``.

    Three ``find`` calls (memchr, many bytes per instruction) instead of a regex character class that steps
    through every byte: ETX is looked for first, and STX and EOT only before it, so a frame costs three short scans.
    """
    stop = data.find(b"\x03", pos, end)
    if stop < 0:
        stop = end
    i = data.find(b"\x02", pos, stop)
    if i >= 0:
        stop = i
    i = data.find(b"\x04", pos, stop)
    return stop if i < 0 else i


@dataclass(slots=True)
class FramingStats:
    """What the assembler threw away, by reason."""

    interrupted: int = 0  # EOT, or STX before ETX, or stray bytes between two frames (see below)
    overflow: int = 0  # frame longer than max_frame
    skipped_bytes: int = 0  # bytes outside any frame (before the first STX, between ETX and STX)
    frames: int = 0


class FrameAssembler:
    """Feed it chunks, get complete frame bodies (the bytes between STX and ETX) back.

    >>> fa = FrameAssembler()
    >>> fa.feed(b"garbage\\x02\\nA") + fa.feed(b"B\\r\\x03")
    [b'\\nAB\\r']
    """

    __slots__ = ("_buf", "_gap_dirty", "_in_frame", "_synced", "max_frame", "stats")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 16:
            raise ValueError("max_frame must be at least 16 bytes")
        self.max_frame = max_frame
        self.stats = FramingStats()
        self._buf = bytearray()
        self._in_frame = False
        # A meter sends nothing between ETX and the next STX.  Once synchronised, bytes there mean a frame was
        # cut short: an EOT, or a corrupted byte that became ETX (a bit-6 flip turns the 'C' of CCASN into
        # ETX, and the frame then ends cleanly after the previous group), whose tail lands in the gap.  Such a
        # gap is counted as an interrupted frame, so no loss goes unaccounted.
        self._synced = False
        self._gap_dirty = False

    @property
    def pending(self) -> int:
        """Bytes held for the frame in progress (never more than ``max_frame``)."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget the frame in progress (after a reconnect, the next bytes are not its continuation)."""
        if self._in_frame:
            self.stats.interrupted += 1
        self._buf.clear()
        self._in_frame = False
        self._synced = self._gap_dirty = False  # what comes next starts mid-stream, like a fresh start

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data``; return the bodies of the frames it completed, in order."""
        data = data.translate(MASK_7BIT)
        out: list[bytes] = []
        buf = self._buf
        stats = self.stats
        pos, end = 0, len(data)
        while pos < end:
            if not self._in_frame:
                i = data.find(b"\x02", pos)
                stop = end if i < 0 else i
                if stop > pos:
                    stats.skipped_bytes += stop - pos
                    # An EOT alone between two frames interrupts nothing (the CBETM sends one when it switches
                    # from long to short frames, 02E Tableau 6).
                    if self._synced and data[pos:stop].strip(b"\x04"):
                        self._gap_dirty = True
                if i < 0:
                    break
                if self._gap_dirty:
                    stats.interrupted += 1
                    self._gap_dirty = False
                self._synced = True
                self._in_frame = True
                buf.clear()
                pos = i + 1
                continue
            stop = _next_control(data, pos, end)
            if len(buf) + stop - pos > self.max_frame:
                stats.overflow += 1
                buf.clear()
                self._in_frame = False
                pos = stop  # resynchronise on the next control byte (or the next chunk)
                continue
            if stop == end:
                buf += data[pos:stop]
                break
            c = data[stop]
            if c == 0x03:
                if buf:
                    buf += data[pos:stop]
                    out.append(bytes(buf))
                    buf.clear()
                else:  # the whole frame is in this chunk: one copy instead of two
                    out.append(data[pos:stop])
                stats.frames += 1
                self._in_frame = False
                pos = stop + 1
                continue
            pos = stop + 1
            stats.interrupted += 1  # STX before ETX (the frame restarts) or EOT (the frame is dropped)
            buf.clear()
            if c != 0x02:
                self._in_frame = False
        return out
