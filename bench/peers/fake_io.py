"""Stand-ins for a serial port, so that pull-style decoders read the benchmark's bytes at C speed.

Most published TIC readers do not take bytes: they own a ``serial.Serial`` and call ``readline()`` or
``read(1)`` on it.  To time their parsing and not pyserial (whose ``readline`` is a Python loop over ``read(1)``),
they are handed objects whose reads cost as little as possible:

* :class:`FakeSerial` serves the stream through an :class:`io.BufferedReader` that pulls one benchmark chunk
  (4096 bytes by default) per refill, like a driver returning what the UART buffered, and raises
  :class:`EOFError` at the end, because every one of these readers loops forever waiting for more;
* :func:`char_reader` gives a ``read_char()`` that is the C ``__next__`` of an iterator over the decoded chunks;
* :func:`frames_between_stx_etx` is the framing that frame-level decoders (pyteleinfo) leave to their caller.

The end of the stream is an exception rather than an empty read so that no peer's "wait for STX" loop spins.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterable, Iterator

__all__ = ["FakeSerial", "char_reader", "frames_between_stx_etx"]


class _ChunkRaw(io.RawIOBase):
    """A raw stream that returns the benchmark's chunks one per read, as a serial driver returns its buffer."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._pending or next(self._chunks, b"")
        n = min(len(data), len(buffer))
        buffer[:n] = data[:n]
        self._pending = data[n:]
        return n


class FakeSerial:
    """Enough of ``serial.Serial`` for line-based readers: ``readline()`` and ``read()``, EOFError at the end."""

    def __init__(self, chunks: list[bytes]) -> None:
        size = max((len(c) for c in chunks), default=4096)
        self._buf = io.BufferedReader(_ChunkRaw(chunks), buffer_size=size)
        self._readline = self._buf.readline

    def readline(self) -> bytes:
        """One line up to and including LF; EOFError once the stream is exhausted."""
        line = self._readline()
        if not line:
            raise EOFError
        return line

    def read(self, size: int = 1) -> bytes:
        """Up to ``size`` bytes; EOFError once the stream is exhausted."""
        data = self._buf.read(size)
        if not data:
            raise EOFError
        return data


def _end_of_stream() -> Iterator[str]:
    raise EOFError
    yield ""  # pragma: no cover - makes this a generator, so EOFError is raised on first next()


def char_reader(chunks: list[bytes]) -> Callable[[], str]:
    """A ``read_char()`` returning one ``str`` character per call, decoding each chunk as it is reached."""
    chars = itertools.chain(itertools.chain.from_iterable(c.decode("ascii") for c in chunks), _end_of_stream())
    return chars.__next__


def frames_between_stx_etx(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Each complete ``STX ... ETX`` frame (both included) in the order the chunks complete it.

    Bytes before the first STX (a capture starts mid-frame) are dropped; a frame cut by a new STX restarts.
    """
    buf = b""
    for chunk in chunks:
        buf += chunk
        start = buf.find(b"\x02")
        while start >= 0:
            end = buf.find(b"\x03", start)
            if end < 0:
                break
            restart = buf.rfind(b"\x02", start, end)
            yield buf[restart : end + 1]
            start = buf.find(b"\x02", end + 1)
        buf = buf[start:] if start >= 0 else b""
