"""Whether the wall clock can be trusted yet: a Raspberry Pi has no real-time clock.

A Pi boots with the time it stopped at (systemd-timesyncd restores it from its last save; without timesyncd, the
kernel's build date or 1970) and jumps to the right time once a time server answers, minutes or hours later.
Frames are stamped with that clock, which is harmless for a live value but not for a ledger: a frame stamped
yesterday evening puts today's energy on yesterday.  Hence one rule (:class:`ClockGate`), used by the tariff
engine's feed (docs/TARIFF.md section 2, "Clock"):

* an instant before :data:`FLOOR` (2024-01-01) is never plausible: no clock that reads it was ever set;
* otherwise, with ``require_sync``, the clock is plausible once it is known to be synchronised
  (:func:`clock_synchronised`), and stays so (a time server lost later leaves a clock that drifts by seconds a
  day, not one that jumps); while it cannot be told, it is not;
* without ``require_sync`` the floor alone decides.

How "synchronised" is known: systemd-timesyncd (Debian's and Raspberry Pi OS's time service) touches
:data:`TIMESYNC_FLAG` at each synchronisation; otherwise the kernel's own state, adjtimex(2) not returning
``TIME_ERROR`` (what ``timedatectl`` shows as "System clock synchronized: yes", set by timesyncd, chrony or ntpd).
The service's unit has ``ProtectClock=yes``, under which systemd refuses adjtimex even to read (EPERM), so there
the flag file is the signal: a Pi kept by chrony or ntpd under that unit sets ``tariff.wait_for_clock_sync =
false``.  ``teleinfo doctor``'s clock check reads the same kernel state (as root, outside the unit).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import ctypes

__all__ = ["FLOOR", "TIMESYNC_FLAG", "TIME_ERROR", "ClockGate", "clock_synchronised", "kernel_clock_state"]

TIME_ERROR: Final = 5  # adjtimex(2): the clock is not synchronised
FLOOR: Final = 1_704_067_200.0  # 2024-01-01T00:00:00Z: a clock before it was never set
RECHECK_S: Final = 1.0  # while waiting, the kernel is asked at most this often
TIMESYNC_FLAG: Final = Path("/run/systemd/timesync/synchronized")


@functools.cache
def _adjtimex() -> Callable[[ctypes.Array[ctypes.c_char]], int] | None:
    """libc's adjtimex, looked up once, in the symbols the interpreter already has (libc among them):
    ``ctypes.util.find_library`` would run ldconfig in a subprocess, and ctypes is loaded only when the kernel is
    asked (about 300 kB a service that never asks does not carry)."""
    import ctypes

    try:
        fn: Callable[[ctypes.Array[ctypes.c_char]], int] = ctypes.CDLL(None, use_errno=True).adjtimex
    except (OSError, AttributeError):
        return None
    return fn


def kernel_clock_state() -> int | None:
    """adjtimex(2)'s clock state (:data:`TIME_ERROR` = not synchronised), None where it cannot be asked (no libc,
    or refused: EPERM under systemd's ProtectClock=yes)."""
    fn = _adjtimex()
    if fn is None:
        return None
    import ctypes

    buf = ctypes.create_string_buffer(512)  # struct timex with modes = 0: read only
    try:
        state = int(fn(buf))
    except OSError:
        return None
    return state if state >= 0 else None


def clock_synchronised(flag: Path = TIMESYNC_FLAG, state: Callable[[], int | None] = kernel_clock_state) -> bool | None:
    """True when the clock is known synchronised, False when the kernel says it is not, None when nothing tells."""
    try:
        if flag.exists():
            return True
    except OSError:
        pass
    kernel = state()
    return None if kernel is None else kernel != TIME_ERROR


class ClockGate:
    """The rule of the module docstring.  :meth:`plausible` is cheap enough for every frame: once the clock has
    been seen synchronised the answer is latched; before that it is asked at most every second.

    >>> gate = ClockGate(require_sync=True, synchronised=lambda: False, monotonic=lambda: 0.0)
    >>> gate.plausible(1_750_000_000.0), gate.waiting
    (False, True)
    >>> ClockGate(require_sync=False).plausible(86_400.0), ClockGate(require_sync=False).plausible(1_750_000_000.0)
    (False, True)
    """

    def __init__(
        self,
        require_sync: bool = True,
        synchronised: Callable[[], bool | None] = clock_synchronised,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.require_sync = require_sync
        self._synchronised = synchronised
        self._monotonic = monotonic
        self._synced = not require_sync
        self._asked_at: float | None = None
        #: The last answer while waiting: False (the kernel says not synchronised) or None (nothing tells).
        self.last: bool | None = False

    @property
    def waiting(self) -> bool:
        """True while frames wait for the clock to be synchronised."""
        return not self._synced

    def plausible(self, t: float) -> bool:
        """Whether an instant ``t`` (POSIX seconds, as the wall clock gave it) may be trusted."""
        if t < FLOOR:
            return False
        if self._synced:
            return True
        now = self._monotonic()
        if self._asked_at is not None and now - self._asked_at < RECHECK_S:
            return False
        self._asked_at = now
        self.last = self._synchronised()
        self._synced = self.last is True
        return self._synced
