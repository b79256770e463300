"""The InfluxDB line protocol, once: escaping, field values, lines, the parser, and the frames' schema.

Every line the appliance writes (frames, self-check results, its own health counters) is made by
:func:`encode_line`, so escaping is identical everywhere; :func:`parse_line` reads it back (``teleinfo listen``,
the tests).  Measurement names, tag keys and tag values have commas, spaces, ``=`` and backslashes escaped, a
newline written as a space, and are never empty (``-``); string fields have quotes and backslashes escaped;
integers are written ``123i``, booleans ``true``/``false``, and a non-finite float (which the protocol has no
way to write) as ``0.0``.

The frames' schema (``docs/DATA_FORMAT.md`` section 2):

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

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from appliance.tic import HISTORIQUE, STANDARD, Frame, Kind, Value

__all__ = [
    "PRECISIONS",
    "FieldValue",
    "Point",
    "encode_line",
    "escape_key",
    "field_key",
    "field_value",
    "frame_time",
    "frame_to_lines",
    "pack_datagrams",
    "parse_line",
]

FieldValue = bool | int | float | str

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


#: The start of each line (measurement, meter and mode tags) lately written: one per meter.
_HEADS: dict[tuple[str, str, str], str] = {}


def escape_key(value: str) -> str:
    r"""A measurement name, tag key or tag value, escaped; never empty.

    >>> print(escape_key("a b,c=d"), escape_key(""))
    a\ b\,c\=d -
    """
    value = value.replace("\n", " ") or "-"
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _string_field(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def field_value(value: FieldValue) -> str:
    """A field value as the line protocol writes it (type by Python type, see the module docstring)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "0.0"
    return _string_field(value)


def encode_line(measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], ts: int) -> str:
    """One line: tags sorted by key, fields in their order, ``ts`` in the writer's precision."""
    tag_text = "".join(f",{escape_key(k)}={escape_key(v)}" for k, v in sorted(tags.items()))
    field_text = ",".join(f"{escape_key(k)}={field_value(v)}" for k, v in fields.items())
    return f"{escape_key(measurement)}{tag_text} {field_text} {ts}"


#: ``key=value`` of each (label, value) seen lately, per mode: most values repeat from one frame to the next (ids,
#: tariff names, slowly moving indexes), so a frame's fields are mostly looked up, not formatted again.
_FIELD_TEXT: Final[dict[str, dict[tuple[str, Value], str]]] = {"historique": {}, "standard": {}}
_FIELD_TEXT_MAX: Final = 1024  # about 150 kB: the labels that repeat stay, the moving values come and go


def _field_text(mode: str, label: str, value: object) -> str:
    """``key=value`` of one label of a frame ("" for the labels that are not fields)."""
    if label in _EXCLUDED:
        return ""
    spec = (STANDARD if mode == "standard" else HISTORIQUE).get(label)
    if spec is not None and spec.kind is Kind.INT and isinstance(value, int):
        return f"{field_key(label)}={value}i"
    return f"{field_key(label)}={_string_field(str(value))}"


def _fields(frame: Frame) -> list[str]:
    memo = _FIELD_TEXT[frame.mode]
    items = frame.values.items()
    # The frame's (label, value) items are the memo's keys as they are: looked up all at once (map loops in C;
    # a loop building a key per label took 10 % more), then the few new ones formatted, in their places.
    texts = list(map(memo.get, items))
    missing = texts.count(None)
    if missing:
        if len(memo) + missing > _FIELD_TEXT_MAX:
            memo.clear()
        pairs = list(items)
        i = -1
        for _ in range(missing):
            i = texts.index(None, i + 1)
            label, value = pairs[i]
            texts[i] = memo[label, value] = _field_text(frame.mode, label, value)
    return list(filter(None, texts))


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
    head = _HEADS.get((measurement, meter, frame.mode))
    if head is None:
        if len(_HEADS) >= 64:
            _HEADS.clear()
        head = _HEADS[measurement, meter, frame.mode] = (
            f"{escape_key(measurement)},meter={escape_key(meter)},mode={frame.mode} "
        )
    tail = f" {frame_time(frame) * PRECISIONS[precision]}"
    whole = head + ",".join(fields) + tail
    if len(whole) <= max_line and whole.isascii():  # the usual case: one line (TIC data is ASCII)
        return [whole]
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


# --- parsing -----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Point:
    """One parsed line-protocol line."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, int | float | str | bool]
    time: int | None

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...], int | None]:
        """Series and time: lines with the same key are one point (a split frame's lines share it)."""
        return self.measurement, tuple(sorted(self.tags.items())), self.time


def _scan(text: str, start: int, stops: str) -> tuple[str, int]:
    """Unescaped text from ``start`` up to the first unescaped character of ``stops`` (or the end)."""
    out = []
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            out.append(text[i + 1])
            i += 2
            continue
        if c in stops:
            break
        out.append(c)
        i += 1
    return "".join(out), i


INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


def _int64(raw: str) -> int:
    """An integer of the line protocol (fields and timestamps are 64-bit); ValueError beyond, before ``int()``
    would spend time on thousands of digits."""
    digits = raw.lstrip("-+")
    if not digits.isdigit() or not digits.isascii() or len(digits) > 19:
        raise ValueError("not a 64-bit integer")
    value = int(raw)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("not a 64-bit integer")
    return value


def _field_value(raw: str) -> int | float | bool:
    if raw[-1:] in ("i", "u") and raw[:-1].lstrip("-").isdigit():
        return _int64(raw[:-1])
    if raw in ("t", "T", "true", "True", "TRUE"):
        return True
    if raw in ("f", "F", "false", "False", "FALSE"):
        return False
    return float(raw)


def _quote(line: str) -> str:
    """A line quoted in an error message: at most 80 characters of it (a datagram may hold 64 kB)."""
    return repr(line[:80]) + ("..." if len(line) > 80 else "")


def parse_line(line: str) -> Point:
    """Parse one InfluxDB line-protocol line (escapes, quoted strings with spaces); ValueError if malformed.

    >>> p = parse_line('teleinfo,meter=0123,mode=standard msg1="PAS DE  MESSAGE",east=12i 1700000000')
    >>> p.tags, p.fields, p.time
    ({'meter': '0123', 'mode': 'standard'}, {'msg1': 'PAS DE  MESSAGE', 'east': 12}, 1700000000)
    """
    measurement, i = _scan(line, 0, ", ")
    if not measurement:
        raise ValueError(f"no measurement in {_quote(line)}")
    tags: dict[str, str] = {}
    while i < len(line) and line[i] == ",":
        k, i = _scan(line, i + 1, "=, ")
        if i >= len(line) or line[i] != "=":
            raise ValueError(f"bad tag in {_quote(line)}")
        tags[k], i = _scan(line, i + 1, ", ")
    if i >= len(line) or line[i] != " ":
        raise ValueError(f"no fields in {_quote(line)}")
    fields: dict[str, int | float | str | bool] = {}
    i += 1
    while True:
        k, i = _scan(line, i, "=, ")
        if not k or i >= len(line) or line[i] != "=":
            raise ValueError(f"bad field in {_quote(line)}")
        i += 1
        if line[i : i + 1] == '"':
            j = i + 1
            chars = []
            while j < len(line) and line[j] != '"':
                if line[j] == "\\" and j + 1 < len(line) and line[j + 1] in '"\\':
                    j += 1
                chars.append(line[j])
                j += 1
            if j >= len(line):
                raise ValueError(f"unterminated string in {_quote(line)}")
            fields[k] = "".join(chars)
            i = j + 1
        else:
            j = i
            while j < len(line) and line[j] not in ", ":
                j += 1
            try:
                fields[k] = _field_value(line[i:j])
            except ValueError:
                raise ValueError(f"bad value for {k!r} in {_quote(line)}") from None
            i = j
        if i < len(line) and line[i] == ",":
            i += 1
            continue
        break
    rest = line[i:].strip()
    if not rest:
        return Point(measurement, tags, fields, None)
    try:
        return Point(measurement, tags, fields, _int64(rest))
    except ValueError:
        raise ValueError(f"bad timestamp in {_quote(line)}") from None
