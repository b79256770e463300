"""The last 24 hours of power, in memory only: one point per minute (min, mean, max), a fixed-size ring.

Pure: instants are arguments, nothing is written anywhere (an SD card must not see a write per frame).  1440
buckets of five numbers each, whatever the frame rate or the uptime.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

__all__ = ["PowerHistory"]


class PowerHistory:
    """Apparent power over the last ``span_s`` seconds, in buckets of ``bucket_s`` seconds.

    >>> h = PowerHistory()
    >>> for t, va in ((60.0, 100), (70.0, 300), (125.0, 50)):
    ...     _ = h.add(t, va)
    >>> h.points(130.0)
    [(60, 100, 200, 300), (120, 50, 50, 50)]
    """

    def __init__(self, span_s: int = 86_400, bucket_s: int = 60) -> None:
        if bucket_s <= 0 or span_s < bucket_s or span_s % bucket_s:
            raise ValueError("span_s must be a positive multiple of bucket_s")
        self.bucket_s = bucket_s
        self.size = span_s // bucket_s
        self._ids = array("q", [-1] * self.size)  # bucket number (t // bucket_s) held by each slot
        self._count = array("q", [0] * self.size)
        self._sum = array("d", [0.0] * self.size)
        self._min = array("d", [0.0] * self.size)
        self._max = array("d", [0.0] * self.size)
        self._newest = -1

    def add(self, t: float, value: float) -> tuple[int, int, int, int] | None:
        """Count ``value`` (VA) at instant ``t`` (POSIX seconds).

        Returns the bucket that the previous value closed when ``t`` opens a new one (what a live page appends
        to its chart), else None.  A value older than the span, or than what its slot now holds, is ignored, so
        a clock stepped back cannot mix two days in one point.
        """
        if not (math.isfinite(t) and math.isfinite(value)):
            return None
        bucket = int(t // self.bucket_s)
        if bucket <= self._newest - self.size:
            return None
        slot = bucket % self.size
        if self._ids[slot] != bucket:
            if self._ids[slot] > bucket:
                return None
            self._ids[slot] = bucket
            self._count[slot] = 0
            self._sum[slot] = 0.0
            self._min[slot] = value
            self._max[slot] = value
        self._count[slot] += 1
        self._sum[slot] += value
        self._min[slot] = min(self._min[slot], value)
        self._max[slot] = max(self._max[slot], value)
        closed = None
        if bucket > self._newest:
            if self._newest >= 0:
                closed = self._point(self._newest % self.size)
            self._newest = bucket
        return closed

    def _point(self, slot: int) -> tuple[int, int, int, int] | None:
        n = self._count[slot]
        if self._ids[slot] < 0 or n == 0:
            return None
        return (
            self._ids[slot] * self.bucket_s,
            round(self._min[slot]),
            round(self._sum[slot] / n),
            round(self._max[slot]),
        )

    def points(self, now: float) -> list[tuple[int, int, int, int]]:
        """``(bucket start, min, mean, max)`` of every bucket in the span before ``now``, oldest first."""
        first = int(now // self.bucket_s) - self.size + 1
        out = []
        for slot in sorted(range(self.size), key=lambda s: self._ids[s]):
            if self._ids[slot] >= first:
                p = self._point(slot)
                if p is not None:
                    out.append(p)
        return out

    def to_json(self, now: float) -> dict[str, Any]:
        """The ``history`` object of the live page's snapshot (docs/WEB.md)."""
        return {"bucket_s": self.bucket_s, "points": [list(p) for p in self.points(now)]}
