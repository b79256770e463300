"""Putting simulated frames on a wire: standard output, a file, a serial port or pty, or an in-process stream.

Pacing follows the line, not a timer per frame: frame n starts when frames 0..n-1 have used their
:attr:`SimFrame.duration` (bytes at 10 bits each, plus the inter-frame silence), and each group is released when
its last byte would reach the receiver.  So a reader sees groups arrive as from a meter, simulated time (the
frames' DATE) and real time stay together, a late writer catches up instead of drifting, and there is one sleep
per group, not per byte, which keeps a Pi Zero idle.

>>> from datetime import datetime
>>> from io import BytesIO
>>> from appliance.simulator import PARIS, MeterSimulator
>>> sink = BytesIO()
>>> frames = MeterSimulator(start=datetime(2024, 6, 1, tzinfo=PARIS)).frames()
>>> write_frames((next(frames) for _ in range(2)), sink)
2
>>> sink.getvalue().count(b"\\x03")
2
"""

from __future__ import annotations

import os
import re
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from appliance.simulator.injection import ErrorInjector
from appliance.simulator.model import BAUDRATES, BITS_PER_BYTE, MeterSimulator, SimFrame

__all__ = ["Chunk", "Output", "SimulatedStream", "chunks", "open_output", "write_frames"]

_GROUP_START = re.compile(rb"(?=\n)")


class Output(Protocol):
    """Where frames go: a binary file, standard output or a serial port."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...

    def close(self) -> object: ...


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes that reach the receiver together: a group (or the frame's start, or its ETX with the last group)."""

    due: float  # seconds after the stream's first byte started, when the chunk's last byte has arrived
    data: bytes
    end_of_frame: bool


def chunks(frames: Iterable[SimFrame], injector: ErrorInjector | None = None) -> Iterator[Chunk]:
    """Cut frames into timed chunks, one per group, after corrupting them with ``injector`` if given.

    A corrupted frame keeps its original slot on the line (a cut frame is followed by silence), so errors never
    shift the clock.
    """
    begin = 0.0
    for frame in frames:
        data = frame.data if injector is None else injector.inject(frame.data)[0]
        byte_time = BITS_PER_BYTE / BAUDRATES[frame.mode]
        pieces = [p for p in _GROUP_START.split(data) if p]
        sent = 0
        for i, piece in enumerate(pieces):
            sent += len(piece)
            yield Chunk(begin + sent * byte_time, piece, i == len(pieces) - 1)
        begin += frame.duration


def write_frames(
    frames: Iterable[SimFrame],
    out: Output,
    *,
    realtime: bool = False,
    injector: ErrorInjector | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Write ``frames`` to ``out``; return how many were written.

    Fast mode flushes after every frame, so a pipe reader (``teleinfo decode -``) sees each frame at once;
    ``realtime`` releases each group at its time on the wire.  ``stop`` ends the writing early, between groups.
    Errors of ``out`` (BrokenPipeError when the reader went away) are the caller's to handle.
    """
    halt = stop or threading.Event()
    origin = clock()
    written = 0
    for chunk in chunks(frames, injector):
        if realtime:
            delay = origin + chunk.due - clock()
            if delay > 0 and halt.wait(delay):
                break
        elif halt.is_set():
            break
        out.write(chunk.data)
        if realtime or chunk.end_of_frame:
            out.flush()
        written += chunk.end_of_frame
    return written


class _StandardOutput:
    """Standard output's binary buffer, never closed by us (the interpreter owns it)."""

    def write(self, data: bytes, /) -> int:
        return sys.stdout.buffer.write(data)

    def flush(self) -> None:
        sys.stdout.buffer.flush()

    def close(self) -> None:
        sys.stdout.buffer.flush()


def _is_tty(path: str) -> bool:
    try:
        if not stat.S_ISCHR(os.stat(path).st_mode):
            return False
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return os.isatty(fd)
    finally:
        os.close(fd)


def open_output(path: str | None, baudrate: int) -> Output:
    """Standard output for None or ``-``; a tty (serial device, pty) opened 7E1 at ``baudrate``; else a file.

    Raises OSError (pyserial's SerialException is one) when the path cannot be opened.
    """
    if path is None or path == "-":
        return _StandardOutput()
    if _is_tty(path):
        import serial  # only here: stdout and files need no pyserial

        return serial.Serial(
            path, baudrate, bytesize=serial.SEVENBITS, parity=serial.PARITY_EVEN, stopbits=serial.STOPBITS_ONE
        )
    return open(path, "wb")  # the caller closes it


class SimulatedStream:
    """A simulated meter on a wire, in-process: :meth:`read` returns the bytes that have arrived by now.

    For ``teleinfo run --simulate``: a reader thread calls ``read(timeout)`` in a loop, exactly as it would read a
    serial port, and another thread stops it with :meth:`close` (or the ``stop`` event it shares).  Bytes arrive
    at the mode's baud rate, one group at a time; a reader that falls behind gets at most ``max_bytes`` per call
    and catches up.

    >>> from datetime import datetime
    >>> from appliance.simulator import PARIS
    >>> stream = SimulatedStream(MeterSimulator(mode="standard", start=datetime(2024, 6, 1, tzinfo=PARIS)))
    >>> stream.read(timeout=0.5)[:1]
    b'\\x02'
    >>> stream.close(); stream.read(timeout=0.5)
    b''
    """

    def __init__(
        self,
        simulator: MeterSimulator,
        *,
        start: datetime | None = None,
        injector: ErrorInjector | None = None,
        stop: threading.Event | None = None,
        max_bytes: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.simulator = simulator
        self.baudrate = simulator.baudrate
        self.stop = stop or threading.Event()
        self.max_bytes = max_bytes
        self._clock = clock
        self._chunks = chunks(simulator.frames(start), injector)
        self._next = next(self._chunks)
        self._origin = clock()

    @property
    def closed(self) -> bool:
        return self.stop.is_set()

    def read(self, timeout: float | None = 1.0) -> bytes:
        """The bytes received since the last call, waiting up to ``timeout`` seconds (None: forever) for some.

        Returns ``b""`` on timeout or once the stream is closed.
        """
        now = self._clock()
        deadline = None if timeout is None else now + timeout
        while not self.stop.is_set():
            out = bytearray()
            while self._origin + self._next.due <= now and len(out) < self.max_bytes:
                out += self._next.data
                self._next = next(self._chunks)
            if out:
                return bytes(out)
            wait = self._origin + self._next.due - now
            if deadline is not None:
                if now >= deadline:
                    return b""
                wait = min(wait, deadline - now)
            self.stop.wait(wait)
            now = self._clock()
        return b""

    def close(self) -> None:
        """Stop the stream: pending and future reads return ``b""``."""
        self.stop.set()
