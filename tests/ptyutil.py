"""A fake meter on a pseudo-terminal, for testing serial readers without hardware.

:class:`PtyMeter` owns a pty pair and a symlink that plays the part of a ``/dev/serial/by-id/...`` link: the code
under test opens :attr:`PtyMeter.path`, the test writes meter bytes into the master side.  ``unplug()`` and
``replug()`` imitate a USB adapter pulled out and plugged back in, which comes back as a *different* device node
behind the same by-id link.

Pty facts the helpers rely on (Linux):

* The slave is set raw *before* anyone opens it, and the test keeps its own slave fd open.  Otherwise the line
  discipline is cooked while bytes arrive (ETX 0x03 is VINTR, CR becomes LF: docs/PROTOCOL.md §10.7) and bytes written
  while no reader holds the slave may be discarded.  With the slave held open, written bytes wait in the slave's input
  queue until the reader opens it.
* A pty accepts 7E1 termios settings but emulates neither speed nor parity: bytes arrive as written, whatever
  the baud rate the reader chose.  :meth:`PtyMeter.write_paced` paces writes at a baud rate when timing matters.
* Once the master is closed, reading the slave fails with EIO (pyserial raises ``SerialException``).
"""

from __future__ import annotations

import os
import select
import time
import tty
from pathlib import Path

__all__ = ["PtyMeter"]


class PtyMeter:
    """A pty pair behind a symlink; write meter bytes with :meth:`write`, pull the plug with :meth:`unplug`.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d, PtyMeter(Path(d)) as meter:
    ...     meter.write(b"\\x02\\x03")
    ...     os.read(meter.slave, 10)
    b'\\x02\\x03'
    """

    def __init__(self, directory: Path, name: str = "usb-Teleinfo_TIC_adapter-if00-port0") -> None:
        self.path = directory / name
        self.master = -1
        self.slave = -1
        self.slave_name = ""
        self.plugged = False
        self.replug()

    # --- plug --------------------------------------------------------------------------------------------
    def replug(self) -> None:
        """A new pty appears and the link is re-pointed at it (atomically, as udev does)."""
        if self.plugged:
            raise RuntimeError("already plugged")
        master, slave = os.openpty()
        if os.ttyname(slave) == self.slave_name:
            # The kernel reuses a free pty number at once; a USB adapter usually comes back as another ttyUSBn,
            # and a reader must not depend on the name staying the same, so take the next number.
            spare = (master, slave)
            master, slave = os.openpty()
            for fd in spare:
                os.close(fd)
        self.master, self.slave = master, slave
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.slave_name = os.ttyname(self.slave)
        tmp = self.path.with_name(self.path.name + ".new")
        tmp.unlink(missing_ok=True)
        os.symlink(self.slave_name, tmp)
        os.replace(tmp, self.path)
        self.plugged = True

    def unplug(self) -> None:
        """The adapter is pulled out: both ends close (a reader of the slave now gets EIO) and the link goes."""
        if not self.plugged:
            return
        self.plugged = False
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self.master = self.slave = -1
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        self.unplug()

    def __enter__(self) -> PtyMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- data --------------------------------------------------------------------------------------------
    def write(self, data: bytes, timeout: float = 5.0) -> None:
        """Write everything into the master; fail after ``timeout`` s if nobody drains the slave."""
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"pty full: {len(view)} of {len(data)} bytes not written")
            _, writable, _ = select.select([], [self.master], [], left)
            if not writable:
                continue
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                continue
            view = view[n:]

    def write_paced(self, data: bytes, baud: int, chunk: int = 16) -> None:
        """Write at the pace of a line at ``baud`` (10 bits a byte: start, 7 data, parity, stop).

        Writes ``chunk`` bytes at a time and waits until the line would have sent them, so a reader sees bytes
        trickle in as from a real meter, not all at once.
        """
        start = time.monotonic()
        for i in range(0, len(data), chunk):
            self.write(data[i : i + chunk])
            due = start + (i + chunk) * 10 / baud
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
