"""InfluxDB line protocol for decoded frames: the schema of ``docs/DATA_FORMAT.md``, in code.

One point per frame: measurement ``teleinfo`` (configurable), tags ``meter`` and ``mode``, one field per valid
label.  Field types never change: a label of integer kind is always an integer field (``123i``), every other
label always a string field, because InfluxDB refuses a point whose field changes type (a type conflict).

Field keys are the wire label lowercased, ``-`` written ``_`` and ``+`` written ``_p`` (``SMAXSN-1`` ->
``smaxsn_1``, ``NJOURF+1`` -> ``njourf_p1``), so every consumer (InfluxQL, VictoriaMetrics, Telegraf) can use
them unquoted.  The meter address is the ``meter`` tag; PRM is personal data that never changes and is not
written.

Timestamps are whole seconds: the meter's DATE when present, on a sane clock and close to reception time, else
the reception time.  They are written in the requested precision (``s``, ``ms``, ``us`` or ``ns``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from appliance.tic import HISTORIQUE, STANDARD, Frame, Kind

__all__ = ["PRECISIONS", "field_key", "frame_time", "frame_to_lines", "pack_datagrams"]

PRECISIONS: Final = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
MAX_DATAGRAM: Final = 1472  # 1500-byte Ethernet MTU - 20 (IPv4) - 8 (UDP): never fragmented
DATE_MAX_SKEW: Final = 300.0  # seconds between the meter's DATE and reception beyond which DATE is not trusted

_EXCLUDED: Final = frozenset({"ADCO", "ADSC", "PRM", "DATE"})
_KEYS: dict[str, str] = {}


def field_key(label: str) -> str:
    """The field key of a TIC label.

    >>> field_key("SMAXSN-1"), field_key("NJOURF+1"), field_key("EAST")
    ('smaxsn_1', 'njourf_p1', 'east')
    """
    key = _KEYS.get(label)
    if key is None:
        key = _KEYS[label] = label.lower().replace("-", "_").replace("+", "_p")
    return key


def frame_time(frame: Frame) -> int:
    """The point's time in whole POSIX seconds (see the module docstring for the rule)."""
    received = frame.received_at
    date = frame.timestamps.get("DATE")
    if date is not None and not frame.clock_degraded:
        try:
            t = datetime.fromisoformat(date).timestamp()
        except ValueError:
            t = None
        if t is not None and (received is None or abs(t - received) <= DATE_MAX_SKEW):
            return int(t)
    if received is None:
        raise ValueError("frame has neither a trustworthy DATE nor a reception time")
    return int(received)


def _escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _string_field(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fields(frame: Frame) -> list[str]:
    table = STANDARD if frame.mode == "standard" else HISTORIQUE
    out = []
    for label, value in frame.values.items():
        if label in _EXCLUDED:
            continue
        spec = table.get(label)
        if spec is not None and spec.kind is Kind.INT and isinstance(value, int):
            out.append(f"{field_key(label)}={value}i")
        else:
            out.append(f"{field_key(label)}={_string_field(str(value))}")
    return out


def frame_to_lines(
    frame: Frame, measurement: str = "teleinfo", precision: str = "s", max_line: int = MAX_DATAGRAM
) -> list[str]:
    """The frame as line-protocol lines; several lines (same tags and time) if one would exceed ``max_line``.

    A frame without a meter address gives no line: a point that cannot be attributed to a meter is useless
    and would pollute every per-meter query.
    """
    meter = frame.meter
    if meter is None:
        return []
    fields = _fields(frame)
    if not fields:
        return []
    head = f"{_escape_tag(measurement)},meter={_escape_tag(meter)},mode={frame.mode} "
    tail = f" {frame_time(frame) * PRECISIONS[precision]}"
    room = max_line - len(head.encode()) - len(tail.encode())
    lines: list[str] = []
    current: list[str] = []
    size = 0
    for f in fields:
        n = len(f.encode()) + (1 if current else 0)
        if current and size + n > room:
            lines.append(head + ",".join(current) + tail)
            current, size = [], 0
            n -= 1
        current.append(f)
        size += n
    lines.append(head + ",".join(current) + tail)
    return lines


def pack_datagrams(lines: list[str], max_bytes: int = MAX_DATAGRAM) -> list[bytes]:
    """Join lines with newlines into as few payloads of at most ``max_bytes`` as possible (never split a line)."""
    out: list[bytes] = []
    current = b""
    for line in lines:
        b = line.encode()
        if current and len(current) + 1 + len(b) > max_bytes:
            out.append(current)
            current = b""
        current = b if not current else current + b"\n" + b
    if current:
        out.append(current)
    return out
