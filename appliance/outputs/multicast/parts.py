"""Multicast JSON frames larger than a datagram: split into self-contained parts, and merged back.

A frame that does not fit in one datagram (a three-phase standard frame is about 3.5 kB) is sent as several
*parts*, each a complete JSON object on its own (``docs/DATA_FORMAT.md`` §3): every part has ``mode`` and
``meter``, ``"part": [i, n]`` and ``"seq"``; object-valued keys are split by their keys across consecutive parts,
so merging the parts in order gives back the original object exactly (:func:`merge_json_parts`,
:class:`JsonReassembler`, which also bounds the memory a lossy network can pin).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final

from appliance.lineproto import MAX_DATAGRAM

__all__ = ["JsonReassembler", "merge_json_parts", "split_json"]

_PART_KEYS: Final = ("part", "seq")


def json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as ``teleinfo decode`` prints it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def split_json(obj: dict[str, Any], max_bytes: int = MAX_DATAGRAM, seq: int = 0) -> list[bytes]:
    """``obj`` as one compact JSON datagram, or as parts of at most ``max_bytes`` (module docstring).

    Parts are filled greedily in the object's key order, with exact byte accounting, so consecutive keys of a
    split object stay together and the number of datagrams is small.
    """
    whole = json_bytes(obj)
    if len(whole) <= max_bytes:
        return [whole]
    # Units that cannot be split further: (key, None, value) or (key, subkey, subvalue) of an object value.
    units: list[tuple[str, str | None, Any]] = []
    for k, v in obj.items():
        if k in ("mode", "meter"):
            continue
        if isinstance(v, dict) and v:
            units.extend((k, sk, sv) for sk, sv in v.items())
        else:
            units.append((k, None, v))
    bound = len(units)  # never more parts than units: the header reserves room for "part":[bound,bound]
    head_size = len(
        json_bytes({"mode": obj.get("mode"), "meter": obj.get("meter"), "part": [bound, bound], "seq": seq})
    )
    parts: list[list[tuple[str, str | None, Any]]] = []
    current: list[tuple[str, str | None, Any]] = []
    size = head_size  # includes the closing brace
    for unit in units:
        k, sk, v = unit
        if sk is None:
            n = 1 + len(json_bytes(k)) + 1 + len(json_bytes(v))
        else:
            n = 1 + len(json_bytes(sk)) + 1 + len(json_bytes(v))
            if not (current and current[-1][0] == k and current[-1][1] is not None):
                n += len(json_bytes(k)) + 1 + 2  # ,"key":{ ... } opens the object in this part
        if current and size + n > max_bytes:
            parts.append(current)
            current, size = [], head_size
            if sk is not None:
                n = 1 + len(json_bytes(k)) + 1 + 2 + len(json_bytes(sk)) + 1 + len(json_bytes(v))
        current.append(unit)
        size += n
    if current:
        parts.append(current)
    out = []
    total = len(parts)
    for i, chunk in enumerate(parts, 1):
        part: dict[str, Any] = {"mode": obj.get("mode"), "meter": obj.get("meter"), "part": [i, total], "seq": seq}
        for k, sk, v in chunk:
            if sk is None:
                part[k] = v
            else:
                part.setdefault(k, {})[sk] = v
        out.append(json_bytes(part))
    return out


def merge_json_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The original object from all its parts (any order): the inverse of :func:`split_json`."""
    merged: dict[str, Any] = {}
    for part in sorted(parts, key=lambda p: p.get("part", [1])[0]):
        for k, v in part.items():
            if k in _PART_KEYS:
                continue
            if isinstance(v, dict) and isinstance(merged.get(k), dict):
                merged[k].update(v)
            elif isinstance(v, dict):
                merged[k] = dict(v)
            else:
                merged[k] = v
    return merged


@dataclass
class _Pending:
    """The parts of one split frame received so far, until all arrive or it expires."""

    total: int
    started: float
    parts: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    size: int = 0  # bytes of the datagrams held


def _scalar(value: Any) -> bool:
    """A part's ``mode``, ``meter`` or ``seq`` may key a dict: a string, an integer or null, nothing else."""
    return value is None or isinstance(value, str | int)


class JsonReassembler:
    """Turns multicast JSON datagrams back into whole frame objects, in bounded memory.

    ``feed`` returns the frames a datagram completes: a whole frame at once, a part only with the last missing
    one.  Parts are grouped by sender (``source``, e.g. the ``recvfrom`` address), mode, meter, ``seq`` and part
    count.  A frame still incomplete after ``max_age`` seconds (:meth:`expire`, which the caller also runs on a
    timer, so memory is released while nothing arrives), or when more than ``max_pending`` frames are incomplete or
    their datagrams hold more than ``max_bytes``, is dropped and counted in :attr:`dropped`: UDP loses datagrams,
    and a lost part must not pin memory.  Datagrams that are not a JSON object (nested too deep included), carry
    a malformed ``part`` (more than ``max_parts``), or a ``mode``/``meter``/``seq`` that is not a string, an
    integer or null, are counted in :attr:`invalid` and ignored, never raised: a listener must survive anything
    arriving on its port.

    >>> r = JsonReassembler()
    >>> frame = {"mode": "standard", "meter": "1", "values": {"EAST": 12345678, "SINSTS": 4564}, "invalid": []}
    >>> parts = split_json(frame, max_bytes=80)
    >>> parts[1]
    b'{"mode":"standard","meter":"1","part":[2,3],"seq":0,"values":{"SINSTS":4564}}'
    >>> [r.feed(p) for p in parts] == [[], [], [frame]]
    True
    """

    def __init__(
        self,
        max_age: float = 5.0,
        max_pending: int = 8,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_bytes: int = 1_000_000,
        max_parts: int = 64,
    ) -> None:
        self.max_age = max_age
        self.max_pending = max_pending
        self.max_bytes = max_bytes  # a three-phase frame is ~4 kB in 3 parts: a megabyte is 250 frames
        self.max_parts = max_parts
        self._clock = clock
        self._pending: collections.OrderedDict[Hashable, _Pending] = collections.OrderedDict()
        self._bytes = 0
        self.completed = 0
        self.dropped = 0
        self.invalid = 0

    @property
    def pending(self) -> int:
        """Frames waiting for missing parts."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Bytes of the datagrams held for them."""
        return self._bytes

    def feed(self, datagram: bytes, source: Hashable = None) -> list[dict[str, Any]]:
        """Feed one datagram; return the frame objects it completes (usually zero or one)."""
        self.expire()
        try:
            obj = json.loads(datagram)
        except (ValueError, UnicodeDecodeError, RecursionError):
            self.invalid += 1
            return []
        if not isinstance(obj, dict):
            self.invalid += 1
            return []
        if "part" not in obj:
            self.completed += 1
            return [obj]
        part = obj["part"]
        if (
            not isinstance(part, list)
            or len(part) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in part)
            or not 1 <= part[0] <= part[1] <= self.max_parts
        ):
            self.invalid += 1
            return []
        mode, meter, seq = obj.get("mode"), obj.get("meter"), obj.get("seq")
        if not (_scalar(mode) and _scalar(meter) and _scalar(seq)):
            self.invalid += 1
            return []
        index, total = part
        key = (source, mode, meter, seq, total)
        entry = self._pending.get(key)
        if entry is not None and index in entry.parts:
            # The same part again: without a seq (or after a sender restart) this is the next frame, and the
            # old one will never complete.
            self._drop(key)
            entry = None
        if entry is None:
            entry = self._pending[key] = _Pending(total, self._clock())
        entry.parts[index] = obj
        entry.size += len(datagram)
        self._bytes += len(datagram)
        if len(entry.parts) == entry.total:
            del self._pending[key]
            self._bytes -= entry.size
            self.completed += 1
            return [merge_json_parts(list(entry.parts.values()))]
        while self._pending and (len(self._pending) > self.max_pending or self._bytes > self.max_bytes):
            self._drop(next(iter(self._pending)))  # the oldest first (even the one just fed, if alone too big)
        return []

    def _drop(self, key: Hashable) -> None:
        entry = self._pending.pop(key)
        self._bytes -= entry.size
        self.dropped += 1

    def expire(self) -> None:
        """Drop the frames incomplete for ``max_age`` seconds (run on every datagram, and on a timer)."""
        limit = self._clock() - self.max_age
        while self._pending:
            key, entry = next(iter(self._pending.items()))
            if entry.started >= limit:
                break
            self._drop(key)
