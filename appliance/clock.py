"""Whether the wall clock can be trusted yet: a Raspberry Pi has no real-time clock.

A Pi boots with the time it stopped at (systemd-timesyncd restores it from its last save; without timesyncd, the
kernel's build date or 1970) and jumps to the right time once a time server answers, minutes or hours later.
Frames are stamped with that clock, which is harmless for a live value but not for a ledger: a frame stamped
yesterday evening puts today's energy on yesterday.  Hence one rule (:class:`ClockGate`), used by the tariff
engine's feed (docs/TARIFF.md section 2, "Clock"):

* an instant before :data:`FLOOR` (2024-01-01) is never plausible: no clock that reads it was ever set;
* otherwise, with ``require_sync``, the clock is plausible once the kernel says it is synchronised (adjtimex(2)
  does not return ``TIME_ERROR``: what ``timedatectl`` shows as "System clock synchronized: yes", set by
  systemd-timesyncd, chrony or ntpd), and stays so (a time server lost later leaves a clock that drifts by
  seconds a day, not one that jumps);
* without ``require_sync``, or where the kernel cannot be asked, the floor alone decides.

``teleinfo doctor``'s clock check reads the same state.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time
from collections.abc import Callable
from typing import Final

__all__ = ["FLOOR", "TIME_ERROR", "ClockGate", "kernel_clock_state"]

TIME_ERROR: Final = 5  # adjtimex(2): the clock is not synchronised
FLOOR: Final = 1_704_067_200.0  # 2024-01-01T00:00:00Z: a clock before it was never set
RECHECK_S: Final = 1.0  # while waiting, the kernel is asked at most this often


@functools.cache
def _adjtimex() -> Callable[[ctypes.Array[ctypes.c_char]], int] | None:
    """libc's adjtimex, looked up once (find_library runs ldconfig: far too slow for every frame)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn: Callable[[ctypes.Array[ctypes.c_char]], int] = ctypes.CDLL(name, use_errno=True).adjtimex
    except (OSError, AttributeError):
        return None
    return fn


def kernel_clock_state() -> int | None:
    """adjtimex(2)'s clock state (:data:`TIME_ERROR` = not synchronised), None where it cannot be asked."""
    fn = _adjtimex()
    if fn is None:
        return None
    buf = ctypes.create_string_buffer(512)  # struct timex with modes = 0: read only
    try:
        return int(fn(buf))
    except OSError:
        return None


class ClockGate:
    """The rule of the module docstring.  :meth:`plausible` is cheap enough for every frame: once the clock has
    been seen synchronised the answer is latched; before that the kernel is asked at most every second.

    >>> gate = ClockGate(require_sync=True, state=lambda: TIME_ERROR, monotonic=lambda: 0.0)
    >>> gate.plausible(1_750_000_000.0), gate.waiting
    (False, True)
    >>> ClockGate(require_sync=False).plausible(86_400.0), ClockGate(require_sync=False).plausible(1_750_000_000.0)
    (False, True)
    """

    def __init__(
        self,
        require_sync: bool = True,
        state: Callable[[], int | None] = kernel_clock_state,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.require_sync = require_sync
        self._state = state
        self._monotonic = monotonic
        self._synced = not require_sync
        self._asked_at: float | None = None

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
        state = self._state()
        if state is None or state != TIME_ERROR:  # None: no kernel to ask (not Linux): the floor decides
            self._synced = True
        return self._synced
