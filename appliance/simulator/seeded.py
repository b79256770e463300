"""Seeded randomness and the meter's local clock: every number the simulator draws depends only on its seed and
on the instant or day it concerns.

A stateless hash (splitmix64) instead of a :class:`random.Random` stream: the value at an instant must not depend
on which instants were simulated before it, or ``frames(start=t)`` would differ from the same instant reached
later.  Each kind of draw has its own tag, so two kinds never share a stream.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

__all__ = ["PARIS", "floor", "local", "smooth", "unit", "wall"]

#: The meter's clock: French legal time, with its DST seasons (H winter, E summer in horodates).
PARIS: Final = ZoneInfo("Europe/Paris")
_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_M64: Final = (1 << 64) - 1

# One tag per kind of draw.
TAG_LOAD, TAG_FLICKER, TAG_PF, TAG_VOLT, TAG_CLOUD = 1, 2, 3, 4, 6
TAG_DAY, TAG_TEMPO, TAG_EJP, TAG_GAP, TAG_INDEX, TAG_ID = 7, 8, 9, 11, 12, 13


def _mix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def unit(*keys: int) -> float:
    """A uniform number in [0, 1) that depends only on ``keys``."""
    h = 0
    for k in keys:
        h = _mix(h ^ (k & _M64))
    return (h >> 11) / float(1 << 53)


def smooth(seed: int, tag: int, t: float, knot: float) -> float:
    """Value noise in [0, 1): random at every ``knot`` seconds, smoothly interpolated in between."""
    x = t / knot
    k = math.floor(x)
    f = x - k
    f = f * f * (3.0 - 2.0 * f)
    a = unit(seed, tag, k)
    return a + (unit(seed, tag, k + 1) - a) * f


def local(day: date, hours: float) -> datetime:
    """The UTC instant of ``hours`` (may exceed 24) after local midnight of ``day``, on the wall clock."""
    wall_clock = datetime.combine(day, time(), tzinfo=PARIS) + timedelta(hours=hours)
    return wall_clock.astimezone(UTC)


def wall(day: date, hour: int) -> datetime:
    """``hour`` o'clock on ``day``, naive local wall time (as the season-less DPM/FPM horodates carry it)."""
    return datetime.combine(day, time(hour))


def floor(t: datetime, period: timedelta) -> datetime:
    """``t`` rounded down to a multiple of ``period`` (UTC; French offsets are whole hours)."""
    return t - (t - _EPOCH) % period
