"""The meter on a serial port (GPIO UART or USB adapter), kept open without anyone's help.

An appliance has no operator, so everything that can go wrong with a serial link is handled here, once:

* **The port is not there yet, or goes away.**  USB adapters are unplugged and replugged, and come back as
  another ``ttyUSBn``: the device is opened by the path as configured (a ``/dev/serial/by-id/...`` link is
  resolved again at every open), a vanished or re-pointed path counts as lost, and every read error
  (``SerialException``/``OSError``, e.g. EIO on a pty whose master closed) closes the port and schedules a reopen.
* **The port is open but nothing useful comes.**  The watchdog is on *progress*, not on bytes (docs/DESIGN.md §1):
  garbage at the wrong speed or from a demodulator that cannot follow 9600 Bd (docs/PROTOCOL.md §10.8) keeps bytes
  flowing, so only a frame the service reports as verified (:meth:`SerialSource.frame_ok`) resets the no-data timer.
* **Which speed?**  In ``auto`` mode the port alternates between 9600 Bd (standard) and 1200 Bd (historique), each
  for a window long enough to see a whole frame even when reading starts mid-frame (docs/PROTOCOL.md §10.5), until a
  frame verifies; that mode is then locked and remembered, so a reopen tries it first.
* **Woken a few times per frame, not at every piece.**  A read sleeps while the frame's ETX cannot have
  arrived yet (the meter's speed and its frames' length say when), then gathers the pieces up to the ETX
  (:class:`_Pacer`), so the service's loop runs once per frame, not once per 16-byte piece.
* **Retrying forever without flooding.**  Reopen attempts back off from 0.5 s, doubling up to
  ``reconnect_max_backoff``, and wait on the service's ``stop`` event in slices of at most 0.25 s, so ``read()``
  always returns quickly (the caller pings the systemd watchdog and handles SIGHUP between reads).  Each state
  change is logged once, not once per attempt; every change also goes to :meth:`Stats.source`.

The port is opened raw by pyserial (no canonical mode, so ETX and CR survive, docs/PROTOCOL.md §10.7), in 7E1
(the TIC's own format) or 8N1 for UARTs without parity (the decoder masks bit 7, docs/PROTOCOL.md §10.6).
``device = "auto"`` is the Raspberry Pi's header UART, resolved from the device tree at each open
(:mod:`appliance.sources.serial.uart`), and ``framing = "auto"`` picks 8N1 on the mini UART (Linux drops a parity
request there), 7E1 elsewhere.

All methods are meant to be called from one thread (the service's reader); a lock makes :meth:`close` safe from
another thread too, which then waits for the current read (at most READ_TIMEOUT + GATHER_MAX).
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Final

import serial  # type: ignore[import-untyped, unused-ignore]

try:
    from termios import error as _TermiosError
except ImportError:  # pragma: no cover - not POSIX

    class _TermiosError(Exception):  # type: ignore[no-redef]
        """Stands in for termios.error where there is no termios."""


from appliance.runtime import Backoff
from appliance.sources.serial.config import SourceConfig
from appliance.sources.serial.uart import AUTO, framing_for, resolve_header_uart
from appliance.stats import Stats
from appliance.tic import BAUDRATES

__all__ = ["DETECT_WINDOW", "SerialSource"]

_LOG = logging.getLogger(__name__)

DETECT_WINDOW: Final = {9600: 3.0, 1200: 6.0}
"""Seconds ``auto`` listens at each speed before trying the other.

A standard frame lasts about 1 s at 9600 Bd and a historique one 1.5-2.5 s at 1200 Bd; reading starts mid-frame,
so each window holds about two frames: the partial one that is skipped and a whole one that verifies."""

READ_TIMEOUT: Final = 0.5  # how long read() sleeps or waits on a silent port before the service's loop runs again
READ_CHUNK: Final = 4096  # bytes per read at most: several frames, far more than a UART queues between reads
QUIET_MARGIN: Final = 0.025  # s: the reader wakes this much before the earliest time the next ETX can arrive
# (a piece and a half of a USB adapter: a bus or a scheduler that delays one frame's ETX and not the next must not
# make the reader sleep past the next one; it costs a wake-up or two per frame)
ADAPTER_DELAY: Final = 0.016  # s: how long a USB adapter may hold received bytes (FTDI's default latency timer)
GATHER_MAX: Final = 0.25  # once bytes flow, read() waits this long at most for the rest of the frame (its ETX)
MAX_WAIT: Final = 0.25  # longest read() waits for a reopen attempt that is not due yet
INITIAL_BACKOFF: Final = 0.5
BAD_FRAMES_TO_SWITCH: Final = 2  # frames in one detection window, none verified: wrong speed, try the other now
DEVICE_CHECK_INTERVAL: Final = 1.0  # how often an idle port checks that its path still names the same device
STABLE_AFTER: Final = 10.0  # a port that stayed open this long was healthy: the next loss retries from 0.5 s

# What a failing port raises.  pyserial lets termios.error (not an OSError) escape from tcsetattr/tcflush, e.g.
# when (re)configuring a pty or a vanished USB device.
_IO_ERRORS: Final = (serial.SerialException, OSError, _TermiosError)


class _Pacer:
    """Reads one port frame by frame, waking as few times as the line allows (:meth:`read`).

    A USB adapter hands a standard frame over in about 60 pieces of 16 bytes (its latency timer), a UART in a
    few dozen, and every wake-up costs a ``select``, a ``read`` and a kernel round trip: most of the service's
    CPU when it woke at every piece.  But a meter sends its frames back to back at a fixed speed, and a frame of
    a given meter keeps its length from one frame to the next (every TIC field has a fixed width; a group that
    appears or disappears changes it, rarely).  So once two frame ends were seen, the next ETX cannot come before
    ``last ETX + length x byte time`` (the silence between frames, at least 16.7 ms, covers a USB adapter's
    16 ms of jitter): until then the reader sleeps, and only from then on does it wake at each piece until the
    ETX, which reaches the decoder the moment the kernel has it, as before.  That is about three wake-ups per
    frame instead of sixty.  A frame shorter than the shortest of the last :data:`LENGTHS_KEPT` frames is seen
    late by the time its missing bytes would have taken (the one frame after a group disappeared).

    (termios ``VMIN``/``VTIME`` would count bytes or time gaps instead, and every change of them reaches the
    driver, a USB control transfer on some adapters; canonical mode would wake on ETX but treats LF and CR as
    line editing, docs/PROTOCOL.md §10.7: the port stays raw.)
    """

    LENGTHS_KEPT = 4

    def __init__(self, ser: serial.Serial, stop: threading.Event) -> None:
        self.ser = ser
        self.stop = stop
        self.fd: int | None = getattr(ser, "fd", None) if isinstance(getattr(ser, "fd", None), int) else None
        self.reset()

    def reset(self) -> None:
        """Forget what was learnt (a new speed: the bytes that follow are another stream)."""
        self.byte_time = 10 / max(1, int(self.ser.baudrate or 9600))  # start, 7 data, parity, stop
        self.since_etx: int | None = None  # bytes read since the last ETX; None before the first one
        self.lengths: list[int] = []  # the last frames' lengths, ETX to ETX
        self.quiet_until = 0.0  # monotonic time before which no ETX can arrive
        self.seen = time.monotonic()  # when the port was last looked at (read, or found empty)

    def _learn(self, data: bytes) -> None:
        """Account for ``data``, just read; every byte of it came after :attr:`seen` (the previous look at the
        port), which anchors the earliest time the next ETX can arrive."""
        now = time.monotonic()
        before, self.seen = self.seen, now
        last = data.rfind(b"\x03")
        if last < 0:
            if self.since_etx is not None:
                self.since_etx += len(data)
            return
        if self.since_etx is not None:
            first = data.find(b"\x03")
            ends = [first]
            while ends[-1] != last:
                ends.append(data.find(b"\x03", ends[-1] + 1))
            sizes = [self.since_etx + first + 1] + [b - a for a, b in itertools.pairwise(ends)]
            self.lengths = (self.lengths + sizes)[-self.LENGTHS_KEPT :]
        self.since_etx = len(data) - last - 1
        if not self.lengths:
            return
        # The last byte read came after `before`; the next ETX is at least (length - since_etx) bytes later, and
        # after the silence (>= 16.7 ms) if that byte is the ETX.  An adapter may have held it up to 16 ms.
        ahead = (min(self.lengths) - self.since_etx) * self.byte_time - QUIET_MARGIN
        if self.since_etx:
            ahead -= ADAPTER_DELAY
        self.quiet_until = before + ahead

    def _available(self) -> bytes:
        """Whatever the port holds now, without waiting (``b""`` if nothing; pyserial opens it O_NONBLOCK)."""
        assert self.fd is not None
        try:
            data = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            data = b""
        self._learn(data)
        return data

    def _read_ready(self) -> bytes:
        assert self.fd is not None
        data = os.read(self.fd, READ_CHUNK)
        if not data:  # readable but empty: what a vanished USB adapter looks like (pyserial says the same)
            raise serial.SerialException("device reports readiness to read but returned no data (device disconnected?)")
        return data

    def read(self) -> bytes:
        """The bytes of the port up to the end of a frame, or what came within about READ_TIMEOUT.

        Sleeps (on ``stop``) while no ETX can have arrived, at most READ_TIMEOUT at a time; then waits for the
        first byte (at most READ_TIMEOUT) and every piece after it until one holds an ETX or GATHER_MAX has
        passed.  On a POSIX port these are plain ``select`` and ``read`` calls (pyserial's ``read(in_waiting)``
        adds an ioctl, timers and a second select per call); other ports (pyserial URL handlers) use pyserial's
        read, one piece per call.
        """
        if self.fd is None:
            return bytes(self.ser.read(max(1, self.ser.in_waiting)))
        pieces: list[bytes] = []
        wait = self.quiet_until - time.monotonic()
        if wait > 0:
            self.stop.wait(min(wait, READ_TIMEOUT))
            data = self._available()
            if b"\x03" in data or time.monotonic() < self.quiet_until or self.stop.is_set():
                return data  # a frame, or the service's loop runs before the next part of the wait
            if data:
                pieces.append(data)
        if not pieces:
            ready, _, _ = select.select([self.fd], [], [], READ_TIMEOUT)
            if not ready:
                self.seen = time.monotonic()
                return b""
            data = self._read_ready()
            self._learn(data)
            if b"\x03" in data:
                return data
            pieces.append(data)
        size = sum(map(len, pieces))
        until = time.monotonic() + GATHER_MAX
        while size < READ_CHUNK:
            left = until - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                break
            piece = os.read(self.fd, READ_CHUNK - size)
            if not piece:  # the device went away: hand over what came, the next read reports it
                break
            self._learn(piece)
            pieces.append(piece)
            size += len(piece)
            if b"\x03" in piece:
                break
        return b"".join(pieces)


class _Serial(serial.Serial):  # type: ignore[misc, unused-ignore]
    """pyserial's port, except that opening it keeps what is already in the input queue.

    ``Serial.open()`` flushes the input (``tcflush``).  Bytes a meter or a replay sent before we (re)opened the
    port are real data: flushing them loses the first frame after every replug, and with a replay into a pty
    (tests, ``teleinfo replay --to PTY``) the beginning of the stream.  If a later pyserial renames the private
    hook, the override just stops applying and the port is flushed as before: nothing breaks.
    """

    _opening = False

    def open(self) -> None:
        self._opening = True
        try:
            super().open()
        finally:
            self._opening = False

    def _reset_input_buffer(self) -> None:
        if not self._opening:
            super()._reset_input_buffer()  # type: ignore[misc, unused-ignore]


def _errno(e: BaseException) -> int | None:
    """The errno of an OSError, SerialException or termios.error (which keeps it in ``args[0]``)."""
    code = getattr(e, "errno", None)
    if code is None and e.args and isinstance(e.args[0], int):
        code = e.args[0]
    return code if isinstance(code, int) else None


def _describe(e: BaseException) -> str:
    """A short reason for the log: ``No such file or directory`` rather than pyserial's long message."""
    text = str(e)
    if "exclusively lock" in text:
        return "in use by another program (exclusive lock held)"
    if "returned no data" in text:  # pyserial's words for a readable fd that reads empty: the device is gone
        return "device disconnected (read returned no data)"
    code = _errno(e)
    if code is not None and code in errno.errorcode:
        return os.strerror(code)
    return text


class SerialSource:
    """Bytes from the meter on ``cfg.device``; reopens by itself and finds the speed in ``auto`` mode.

    >>> import threading
    >>> from appliance.sources.serial.config import SourceConfig
    >>> from appliance.stats import Stats
    >>> src = SerialSource(SourceConfig(device="/nonexistent"), Stats(), threading.Event())
    >>> src.read()  # never raises: the port is reopened later, and "cannot open" is logged once
    b''
    >>> src.close()

    ``clock`` is the monotonic clock used for the no-data timer, detection windows and backoff (tests may pass
    their own); waiting itself is always done on ``stop``.
    """

    def __init__(
        self,
        cfg: SourceConfig,
        stats: Stats,
        stop: threading.Event,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._stats = stats
        self._stop = stop
        self._clock = clock
        self._lock = threading.RLock()
        self._serial: serial.Serial | None = None
        self._pacer: _Pacer | None = None
        self._first_open = threading.Event()
        self._closed = False
        self._auto = cfg.mode == "auto"
        # The mode whose speed is in force: fixed by the configuration, or found by auto-detection.
        self._locked: str | None = None if self._auto else cfg.mode
        # The mode a reopen tries first in auto mode: the last one that verified, kept across reopens.
        self._remembered: str | None = self._locked
        self._baud = self._baud_to_open()
        self._state = "starting"
        self._ever_opened = False
        self._failures = 0  # failed open attempts since the port was last open
        self._backoff = Backoff(INITIAL_BACKOFF, cfg.reconnect_max_backoff)
        self._next_attempt = -math.inf
        self._open_error: str | None = None  # the "cannot open" reason already logged in this outage
        self._resolved: str | None = None  # what the device path pointed to when it was opened
        self._opened_at = 0.0
        self._last_ok = 0.0  # last verified frame, or the last open: start of the no-data timer
        self._window_start = 0.0  # start of the current auto-detection window
        self._bad_in_window = 0
        self._last_device_check = 0.0
        # The port to open: the configured path, or for "auto" the header UART found at each open (appliance.sources.
        # uart); and the character format in force there (8N1 on a UART without parity, or one that refused 7E1).
        self._device = cfg.device
        self._target_framing = "7E1" if cfg.framing == "auto" else cfg.framing
        self._framing = self._target_framing
        self._resolution: str | None = None  # what "auto" or framing "auto" found, logged when it changes
        self._fallback_logged = False
        stats.source(state="starting", detail=cfg.device, mode=None if self._auto else cfg.mode)

    # --- public ------------------------------------------------------------------------------------------
    @property
    def first_open(self) -> threading.Event:
        """Set once the port has been opened successfully (the service is READY before: it does not wait for it)."""
        return self._first_open

    @property
    def is_open(self) -> bool:
        ser = self._serial
        return ser is not None and bool(ser.is_open)

    @property
    def baudrate(self) -> int:
        """The speed the port is set to (or will be opened at, while it is closed)."""
        return self._baud if self._serial is not None else self._baud_to_open()

    @property
    def mode(self) -> str | None:
        """The TIC mode whose speed is locked: the configured one, or in ``auto`` the one detected (else None)."""
        return self._locked

    @property
    def state(self) -> str:
        """``starting``, ``open``, ``no_data``, ``lost`` or ``closed`` (the same as in :meth:`Stats.source`)."""
        return self._state

    def read(self) -> bytes:
        """The next bytes from the port (up to a frame's end), possibly ``b""``, within about 0.75 s; never raises for
        I/O problems.

        Opens the port when it is due (lazily at first, then on the backoff schedule), and closes it on any
        error, on a vanished or re-pointed device path, or when no frame verified for ``no_data_timeout``.
        Returns at once with ``b""`` once ``stop`` is set or after :meth:`close`.
        """
        with self._lock:
            if self._closed or self._stop.is_set():
                return b""
            ser = self._serial
            if ser is None:
                ser = self._open_when_due()
                if ser is None:
                    return b""
            try:
                # Block (at most READ_TIMEOUT) for the first byte, then gather up to the frame's ETX (at most
                # GATHER_MAX): never a sleep while data flows, so an ETX reaches the decoder as soon as the kernel
                # has it.
                data = self._pacer.read() if self._pacer is not None else b""
            except _IO_ERRORS as e:
                self._lose(_describe(e))
                return b""
            now = self._clock()
            if data:
                self._stats.source(nbytes=len(data))
            elif now - self._last_device_check >= DEVICE_CHECK_INTERVAL:
                self._last_device_check = now
                gone = self._device_gone()
                if gone:
                    self._lose(gone)
                    return data
            self._watch(now)
            return data

    def frame_ok(self, mode: str) -> None:
        """A decoded frame verified in ``mode``: reset the no-data timer; in ``auto``, lock that mode's speed."""
        with self._lock:
            if self._closed:
                return
            self._last_ok = self._clock()
            self._backoff.reset()
            self._bad_in_window = 0
            if self._auto and mode in BAUDRATES and mode != self._locked:
                self._lock_mode(mode)
            # (If the watchdog closed the port in the very read that brought this frame, the reopen comes
            # first and the next verified frame ends the no-data state.)
            if self._state == "no_data" and self._serial is not None:
                _LOG.info("valid frames again from %s (%s, %d Bd)", self._device, self._locked, self._baud)
                self._set_state("open", self._open_detail())

    def frame_bad(self) -> None:
        """A frame came but nothing in it verified: while auto-detecting, evidence of the wrong speed."""
        with self._lock:
            if self._closed or not self._auto or self._locked is not None or self._serial is None:
                return
            self._bad_in_window += 1
            if self._bad_in_window >= BAD_FRAMES_TO_SWITCH:
                self._switch_baud(self._clock(), f"{self._bad_in_window} frames at {self._baud} Bd, none verified")

    def close(self) -> None:
        """Close the port for good; later reads return ``b""``.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_port()
            self._set_state("closed", "closed")
            _LOG.info("serial %s closed", self._device)

    # --- opening -----------------------------------------------------------------------------------------
    def _baud_to_open(self) -> int:
        return BAUDRATES[self._locked or self._remembered or "standard"]

    def _describe_port(self) -> str:
        resolved = self._resolved
        if resolved and resolved != self._device:
            return f"{self._device} ({resolved})"
        return self._device

    def _speed(self) -> str:
        detecting = ", auto-detecting" if self._auto and self._locked is None else ""
        return f"{self._baud} Bd {self._framing}{detecting}"

    def _open_detail(self) -> str:
        return f"{self._describe_port()} at {self._speed()}"

    def _open_when_due(self) -> serial.Serial | None:
        """Open the port if the backoff allows it now; otherwise wait on ``stop`` (at most MAX_WAIT) and give up."""
        now = self._clock()
        if now < self._next_attempt:
            self._stop.wait(min(MAX_WAIT, self._next_attempt - now))
            if self._stop.is_set() or self._clock() < self._next_attempt:
                return None
        return self._open()

    def _resolve(self) -> str | None:
        """Settle which device and framing to open (``auto``: from the device tree); None, or why there is none."""
        cfg = self._cfg
        if cfg.device == AUTO:
            uart = resolve_header_uart()
            if uart.device is None:
                return f"no header UART: {uart.problem}"
            self._device = uart.device
            framing, why = uart.framing, uart.describe()
            if cfg.framing != "auto":
                framing, why = cfg.framing, f"{why}; source.framing = {cfg.framing}"
        else:
            framing, why = framing_for(cfg.device, cfg.framing)
            why = f"{cfg.device}: {framing} ({why})"
        self._target_framing = framing
        if why != self._resolution:
            self._resolution = why
            _LOG.info("source.device %s, framing %s: %s", cfg.device, cfg.framing, why)
        return None

    def _open(self) -> serial.Serial | None:
        baud = self._baud_to_open()
        reason = self._resolve()
        if reason is None:
            try:
                ser = self._new_serial(self._device, baud)
            except (*_IO_ERRORS, ValueError) as e:
                reason = _describe(e)
        if reason is not None:
            self._failures += 1
            self._next_attempt = self._clock() + self._next_delay()
            if reason != self._open_error:  # once per outage (again only if the reason changes)
                self._open_error = reason
                _LOG.warning(
                    "cannot open %s: %s (retrying every %g to %g s)",
                    self._device,
                    reason,
                    INITIAL_BACKOFF,
                    self._cfg.reconnect_max_backoff,
                )
            self._set_state("lost", f"cannot open {self._device}: {reason}")
            return None
        now = self._clock()
        self._serial = ser
        self._pacer = _Pacer(ser, self._stop)
        self._baud = baud
        self._resolved = os.path.realpath(self._device)
        self._opened_at = self._last_ok = self._window_start = self._last_device_check = now
        self._bad_in_window = 0
        self._open_error = None
        port, speed, detail = self._describe_port(), self._speed(), self._open_detail()
        if not self._ever_opened:
            _LOG.info("serial %s opened at %s", port, speed)
            self._set_state("open", detail)
        elif self._state == "no_data":
            _LOG.debug("serial %s reopened at %s", port, speed)
            self._set_state("no_data", f"no valid frame; reopened {detail}", reconnect=True)
        else:
            n = self._failures + 1
            _LOG.info("serial %s reopened after %d attempt%s at %s", port, n, "" if n == 1 else "s", speed)
            self._set_state("open", detail, reconnect=True)
        self._failures = 0
        self._ever_opened = True
        self._first_open.set()
        return ser

    def _new_serial(self, device: str, baud: int) -> serial.Serial:
        """Open ``device``; if it refuses 7E1 (EINVAL), read it as 8N1 instead, as docs/PROTOCOL.md §10.6 describes.

        A tty that cannot do parity (a pty; a UART driver without parity) keeps CS8 whatever is asked, and a
        kernel that applies POSIX strictly then fails ``tcsetattr`` with EINVAL when nothing else changed, i.e.
        on every reopen at the same speed.  8N1 reads the same characters with the parity bit in bit 7, which
        the decoder masks, so falling back loses nothing but the parity check.
        """
        self._framing = self._target_framing
        try:
            return self._make_serial(device, baud, self._framing)
        except _IO_ERRORS as e:
            if self._framing != "7E1" or _errno(e) != errno.EINVAL:
                raise
            ser = self._make_serial(device, baud, "8N1")
            self._framing = "8N1"
            if not self._fallback_logged:
                self._fallback_logged = True
                _LOG.warning("%s refuses 7E1 (%s); reading it as 8N1 with bit 7 masked", device, _describe(e))
            return ser

    @staticmethod
    def _make_serial(device: str, baud: int, framing: str) -> serial.Serial:
        seven = framing == "7E1"
        return _Serial(
            port=device,
            baudrate=baud,
            bytesize=serial.SEVENBITS if seven else serial.EIGHTBITS,
            parity=serial.PARITY_EVEN if seven else serial.PARITY_NONE,
            stopbits=serial.STOPBITS_ONE,
            timeout=READ_TIMEOUT,
            xonxoff=False,
            rtscts=False,
            dsrdtr=False,
            # Two readers of one UART each get half the bytes, and both see only broken frames.
            exclusive=True,
        )

    def _next_delay(self) -> float:
        return self._backoff.next()

    # --- watching ----------------------------------------------------------------------------------------
    def _device_gone(self) -> str | None:
        """Why the open port no longer is the configured device (vanished or re-pointed path), or None."""
        device = self._device
        try:
            resolved = os.path.realpath(device, strict=True)
        except OSError:
            return f"{device} vanished"
        if resolved != self._resolved:
            return f"{device} now points to {resolved}"
        return None

    def _no_data_timeout(self) -> float:
        # While auto-detecting, give each speed at least one window before declaring the meter silent.
        if self._auto and self._locked is None:
            return max(self._cfg.no_data_timeout, sum(DETECT_WINDOW.values()))
        return self._cfg.no_data_timeout

    def _watch(self, now: float) -> None:
        """Progress checks after each read: the auto-detection window, then the no-data watchdog."""
        if self._auto and self._locked is None and now - self._window_start >= DETECT_WINDOW[self._baud]:
            self._switch_baud(now, f"no valid frame at {self._baud} Bd in {DETECT_WINDOW[self._baud]:g} s")
            if self._serial is None:
                return
        timeout = self._no_data_timeout()
        if now - self._last_ok >= timeout:
            self._no_data(timeout)

    def _no_data(self, timeout: float) -> None:
        """No frame verified for ``timeout`` s: reopen at once (a wedged adapter), re-detecting in auto mode."""
        if self._state != "no_data":
            _LOG.warning("no valid frame for %g s on %s; reopening", timeout, self._device)
        else:
            _LOG.debug("still no valid frame on %s; reopening", self._device)
        if self._auto and self._locked is not None:
            # The meter may have been switched to the other mode; the remembered one is tried first.
            self._locked = None
        self._close_port()
        self._set_state("no_data", f"no valid frame for {timeout:g} s")
        self._next_attempt = -math.inf

    def _lose(self, reason: str) -> None:
        """The port failed or the device went away: close it and schedule a reopen with backoff."""
        now = self._clock()
        if now - self._opened_at >= STABLE_AFTER:
            self._backoff.reset()
        self._close_port()
        self._next_attempt = now + self._next_delay()
        if self._state != "lost":
            _LOG.warning("serial device lost: %s: %s (retrying)", self._device, reason)
        self._set_state("lost", reason)

    # --- speed -------------------------------------------------------------------------------------------
    def _lock_mode(self, mode: str) -> None:
        previous, before = self._locked, self._remembered
        self._locked = self._remembered = mode
        baud = BAUDRATES[mode]
        if previous is None:
            was = f" (was {before})" if before not in (None, mode) else ""
            _LOG.info("TIC mode %s detected on %s%s; locked at %d Bd", mode, self._device, was, baud)
        else:
            _LOG.warning("TIC mode changed from %s to %s on %s; locked at %d Bd", previous, mode, self._device, baud)
        self._stats.source(mode=mode)
        if baud != self._baud:
            self._set_baud(baud, flush=False)  # the frame that proved it came at the old speed; keep what follows
        if self._serial is not None and self._state == "open":
            self._stats.source(detail=self._open_detail())

    def _switch_baud(self, now: float, why: str) -> None:
        new = BAUDRATES["historique"] if self._baud == BAUDRATES["standard"] else BAUDRATES["standard"]
        _LOG.debug("%s; trying %d Bd", why, new)
        # Bytes already queued were received at the old speed, which just failed: drop them.
        self._set_baud(new, flush=True)
        self._window_start = now
        self._bad_in_window = 0
        if self._serial is not None and self._state == "open":
            self._stats.source(detail=self._open_detail())

    def _set_baud(self, baud: int, *, flush: bool) -> None:
        self._baud = baud
        ser = self._serial
        if ser is None:
            return
        try:
            ser.baudrate = baud
            if self._pacer is not None:
                self._pacer.reset()
            if flush:
                ser.reset_input_buffer()
        except (*_IO_ERRORS, ValueError) as e:
            self._lose(f"cannot set {baud} Bd: {_describe(e)}")

    # --- helpers -----------------------------------------------------------------------------------------
    def _set_state(self, state: str, detail: str, *, reconnect: bool = False) -> None:
        self._state = state
        self._stats.source(state=state, detail=detail, reconnect=reconnect)

    def _close_port(self) -> None:
        ser, self._serial = self._serial, None
        if ser is None:
            return
        try:
            ser.close()
        except _IO_ERRORS as e:  # a dead device may refuse even this; it is gone anyway
            _LOG.debug("closing %s: %s", self._device, e)
