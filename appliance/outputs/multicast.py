"""UDP multicast: every frame, in real time, to every listener on the LAN (``docs/DATA_FORMAT.md`` §3).

Sending (:class:`MulticastOutput`).  One UDP socket with ``IP_MULTICAST_TTL`` (1 by default: the datagrams stay
on the local network), ``IP_MULTICAST_LOOP`` on (a listener on the Pi itself sees the stream too) and
``IP_MULTICAST_IF`` from the configured interface: an IPv4 address, an interface name (``struct ip_mreqn`` with
its index and its own address, so the source address is never 0.0.0.0, which Linux receivers drop as martian),
or ``""`` for the system's multicast route.  Every datagram is at most 1472 bytes (1500-byte MTU minus the IPv4
and UDP headers), so it is never fragmented: one lost fragment would lose the whole datagram.

* ``format = "influx"``: line protocol (:mod:`appliance.lineproto`), one or more complete lines per datagram; a
  frame too long for one line becomes several lines with the same tags and timestamp, which InfluxDB and
  Telegraf merge back into one point.
* ``format = "json"``: the frame's :meth:`~appliance.tic.Frame.to_json` object, compact.  A frame that does not
  fit in one datagram (a three-phase standard frame is about 3.5 kB) is sent as several *parts*, each a complete
  JSON object on its own, so a consumer never has to reassemble bytes:

  - every part has ``mode`` and ``meter``, ``"part": [i, n]`` (1-based) and ``"seq"``, a per-sender counter that
    is the same for all parts of one frame (it tells apart the parts of two consecutive frames when one is lost);
  - every other key of the frame is in exactly one part, except object-valued keys (``values``, ``timestamps``,
    ``units``, ``stge``, ``profiles``...), which are split *by their keys* across consecutive parts;
  - so merging the parts in order ``1..n``, updating object-valued keys key by key, copying every other key and
    dropping ``part`` and ``seq``, gives back the original object exactly, key order included
    (:func:`merge_json_parts`, :class:`JsonReassembler`).

  The only datagram that could exceed 1472 bytes is a part holding a single value longer than that, which TIC
  data never has (its longest value, a day profile, decodes to about 1 kB).

Errors (``ENETUNREACH`` without a multicast route, ``ENODEV`` for a vanished interface, ``EADDRNOTAVAIL`` for an
address that is not on this machine...) are raised as :class:`OSError` with a message naming the group and the
interface; the output worker counts them and, this output being best-effort, drops the frame: a datagram that
could not leave now is worthless later.  After a failed send the socket is closed and the next send opens it
again, so an interface that comes back (with a new index) is picked up without a restart.

Receiving: :func:`open_receiver` (bind to the group, not 0.0.0.0, and join on an explicit interface),
:class:`JsonReassembler` and :func:`parse_line`, used by ``teleinfo listen`` and by the tests.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import fcntl
import ipaddress
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final

from appliance.config import MulticastConfig
from appliance.lineproto import MAX_DATAGRAM, frame_to_lines, pack_datagrams
from appliance.tic import Frame

__all__ = [
    "MAX_DATAGRAM",
    "JsonReassembler",
    "MulticastOutput",
    "Point",
    "interface_request",
    "membership_request",
    "merge_json_parts",
    "open_receiver",
    "parse_line",
    "split_json",
]

SEND_TIMEOUT: Final = 2.0  # a full socket buffer must never hang the worker thread forever
IP_MULTICAST_ALL: Final = 49  # Linux value; Python has no constant for it (man 7 ip)
SIOCGIFADDR: Final = 0x8915  # Linux ioctl: an interface's primary IPv4 address
_PART_KEYS: Final = ("part", "seq")


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _is_ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def _interface_index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        # if_nametoindex raises with errno None ("no interface with this name"); give it a real errno.
        raise OSError(errno.ENODEV, f"network interface {name!r} does not exist") from None


def _interface_address(name: str) -> str | None:
    """The interface's primary IPv4 address, or None (no address yet, or not Linux)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
    except OSError:
        return None
    return socket.inet_ntoa(raw[20:24])


def interface_request(interface: str) -> bytes | None:
    """The ``IP_MULTICAST_IF`` value for ``interface`` (address, name, or ``""`` = None: the system's route).

    Raises :class:`OSError` (``ENODEV``) for an interface name that does not exist.
    """
    if not interface:
        return None
    if _is_ipv4(interface):
        return socket.inet_aton(interface)
    index = _interface_index(interface)
    addr = _interface_address(interface) or "0.0.0.0"  # noqa: S104 - "no address": the kernel then picks one
    return struct.pack("4s4si", socket.inet_aton("0.0.0.0"), socket.inet_aton(addr), index)  # noqa: S104


def membership_request(group: str, interface: str = "0.0.0.0") -> bytes:  # noqa: S104
    """The ``IP_ADD_MEMBERSHIP`` value: join ``group`` on an interface given by address or by name.

    ``"0.0.0.0"`` (or ``""``) lets the system choose (the default route's interface): right on a Pi with one
    LAN, wrong in tests, which must name 127.0.0.1 or a namespace's address.
    """
    g = socket.inet_aton(group)
    if not interface or _is_ipv4(interface):
        return struct.pack("4s4s", g, socket.inet_aton(interface or "0.0.0.0"))  # noqa: S104
    return struct.pack("4s4si", g, socket.inet_aton("0.0.0.0"), _interface_index(interface))  # noqa: S104


def _check_group(group: str) -> None:
    try:
        addr = ipaddress.IPv4Address(group)
    except ValueError:
        raise ValueError(f"multicast group {group!r} is not an IPv4 address") from None
    if not addr.is_multicast:
        raise ValueError(f"{group} is not a multicast group (224.0.0.0/4; use one in 239.255.0.0/16)")


# --- sending -----------------------------------------------------------------------------------------------
class MulticastOutput:
    """The multicast output (see the module docstring); built from the ``[outputs.multicast]`` section."""

    name = "multicast"
    durable = False

    def __init__(self, cfg: MulticastConfig, *, max_datagram: int = MAX_DATAGRAM) -> None:
        _check_group(cfg.group)
        if cfg.format not in ("influx", "json"):
            raise ValueError(f"unknown multicast format {cfg.format!r}")
        self.cfg = cfg
        self.max_datagram = max_datagram  # smaller only in tests, to exercise splitting with small frames
        self._sock: socket.socket | None = None
        self._seq = 0
        self._lock = threading.Lock()  # open/send/close may be called from the worker and from close()

    def _where(self) -> str:
        via = f" via {self.cfg.interface}" if self.cfg.interface else " via the system's multicast route"
        return f"{self.cfg.group}:{self.cfg.port}{via}"

    def open(self) -> None:
        """Create the socket; raise :class:`OSError` if the interface does not exist or has not that address."""
        with self._lock:
            self._open_locked()

    def _open_locked(self) -> None:
        self._close_locked()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.cfg.ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            request = interface_request(self.cfg.interface)
            if request is not None:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, request)
            sock.settimeout(SEND_TIMEOUT)
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"multicast {self._where()}: {e.strerror or e}") from e
        self._sock = sock

    def payloads(self, frame: Frame) -> list[bytes]:
        """The datagrams for one frame, each at most ``max_datagram`` bytes (see the module docstring)."""
        if self.cfg.format == "json":
            self._seq = (self._seq + 1) % 2**32
            return split_json(frame.to_json(), self.max_datagram, self._seq)
        if frame.received_at is None:  # the reader stamps every frame; one without (a test) is sent as "now"
            frame = frame.received(time.time(), frame.known_meter)
        lines = frame_to_lines(frame, self.cfg.measurement, self.cfg.precision, max_line=self.max_datagram)
        return pack_datagrams(lines, self.max_datagram)

    def send(self, frame: Frame) -> None:
        """Send the frame's datagrams; raise :class:`OSError` if one cannot leave."""
        with self._lock:
            if self._sock is None:
                self._open_locked()
            sock = self._sock
            assert sock is not None
            dest = (self.cfg.group, self.cfg.port)
            for payload in self.payloads(frame):
                try:
                    sock.sendto(payload, dest)
                except OSError as e:
                    # Reopen on the next send: the interface may come back with a new index.
                    self._close_locked()
                    raise OSError(e.errno, f"multicast send to {self._where()}: {e.strerror or e}") from e

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


# --- JSON parts --------------------------------------------------------------------------------------------
def split_json(obj: dict[str, Any], max_bytes: int = MAX_DATAGRAM, seq: int = 0) -> list[bytes]:
    """``obj`` as one compact JSON datagram, or as parts of at most ``max_bytes`` (module docstring).

    Parts are filled greedily in the object's key order, with exact byte accounting, so consecutive keys of a
    split object stay together and the number of datagrams is small.
    """
    whole = _json(obj)
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
    head_size = len(_json({"mode": obj.get("mode"), "meter": obj.get("meter"), "part": [bound, bound], "seq": seq}))
    parts: list[list[tuple[str, str | None, Any]]] = []
    current: list[tuple[str, str | None, Any]] = []
    size = head_size  # includes the closing brace
    for unit in units:
        k, sk, v = unit
        if sk is None:
            n = 1 + len(_json(k)) + 1 + len(_json(v))
        else:
            n = 1 + len(_json(sk)) + 1 + len(_json(v))
            if not (current and current[-1][0] == k and current[-1][1] is not None):
                n += len(_json(k)) + 1 + 2  # ,"key":{ ... } opens the object in this part
        if current and size + n > max_bytes:
            parts.append(current)
            current, size = [], head_size
            if sk is not None:
                n = 1 + len(_json(k)) + 1 + 2 + len(_json(sk)) + 1 + len(_json(v))
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
        out.append(_json(part))
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
    total: int
    started: float
    parts: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)


class JsonReassembler:
    """Turns multicast JSON datagrams back into whole frame objects, in bounded memory.

    ``feed`` returns the frames a datagram completes: a whole frame at once, a part only with the last missing
    one.  Parts are grouped by sender (``source``, e.g. the ``recvfrom`` address), mode, meter, ``seq`` and part
    count.  A frame still incomplete after ``max_age`` seconds, or when more than ``max_pending`` frames are
    incomplete, is dropped and counted in :attr:`dropped`: UDP loses datagrams, and a lost part must not pin
    memory.  Datagrams that are not a JSON object, or carry a malformed ``part``, are counted in
    :attr:`invalid` and ignored, never raised: a listener must survive anything arriving on its port.

    >>> r = JsonReassembler()
    >>> frame = {"mode": "standard", "meter": "1", "values": {"EAST": 12345678, "SINSTS": 4564}, "invalid": []}
    >>> parts = split_json(frame, max_bytes=80)
    >>> parts[1]
    b'{"mode":"standard","meter":"1","part":[2,3],"seq":0,"values":{"SINSTS":4564}}'
    >>> [r.feed(p) for p in parts] == [[], [], [frame]]
    True
    """

    def __init__(self, max_age: float = 5.0, max_pending: int = 8, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self.max_pending = max_pending
        self._clock = clock
        self._pending: collections.OrderedDict[Hashable, _Pending] = collections.OrderedDict()
        self.completed = 0
        self.dropped = 0
        self.invalid = 0

    @property
    def pending(self) -> int:
        """Frames waiting for missing parts."""
        return len(self._pending)

    def feed(self, datagram: bytes, source: Hashable = None) -> list[dict[str, Any]]:
        """Feed one datagram; return the frame objects it completes (usually zero or one)."""
        self._expire()
        try:
            obj = json.loads(datagram)
        except (ValueError, UnicodeDecodeError):
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
            or not 1 <= part[0] <= part[1] <= 10_000
        ):
            self.invalid += 1
            return []
        index, total = part
        seq = obj.get("seq")
        key = (source, obj.get("mode"), obj.get("meter"), seq if isinstance(seq, Hashable) else None, total)
        entry = self._pending.get(key)
        if entry is not None and index in entry.parts:
            # The same part again: without a seq (or after a sender restart) this is the next frame, and the
            # old one will never complete.
            del self._pending[key]
            self.dropped += 1
            entry = None
        if entry is None:
            entry = self._pending[key] = _Pending(total, self._clock())
        entry.parts[index] = obj
        if len(entry.parts) == entry.total:
            del self._pending[key]
            self.completed += 1
            return [merge_json_parts(list(entry.parts.values()))]
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
            self.dropped += 1
        return []

    def _expire(self) -> None:
        limit = self._clock() - self.max_age
        while self._pending:
            key, entry = next(iter(self._pending.items()))
            if entry.started >= limit:
                break
            del self._pending[key]
            self.dropped += 1


# --- receiving ---------------------------------------------------------------------------------------------
def open_receiver(group: str, port: int, interface: str = "0.0.0.0") -> socket.socket:  # noqa: S104
    """A UDP socket that receives ``group``:``port``, joined on ``interface`` (an address or a name).

    Bound to ``(group, port)``, not ``0.0.0.0``, so it never gets the datagrams of other groups joined on this
    host (Linux's ``IP_MULTICAST_ALL`` default), and ``SO_REUSEADDR`` so several listeners can share the port.
    Raises :class:`ValueError` for a group that is not multicast and :class:`OSError` with a clear message if
    the interface does not exist or has no such address.
    """
    _check_group(group)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range (1-65535)")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((group, port))
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        except OSError:  # not Linux: binding to the group already filters
            pass
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership_request(group, interface))
    except OSError as e:
        sock.close()
        where = interface or "0.0.0.0"  # noqa: S104
        raise OSError(e.errno, f"cannot join {group}:{port} on {where}: {e.strerror or e}") from e
    return sock


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


def _field_value(raw: str) -> int | float | bool:
    if raw[-1:] in ("i", "u") and raw[:-1].lstrip("-").isdigit():
        return int(raw[:-1])
    if raw in ("t", "T", "true", "True", "TRUE"):
        return True
    if raw in ("f", "F", "false", "False", "FALSE"):
        return False
    return float(raw)


def parse_line(line: str) -> Point:
    """Parse one InfluxDB line-protocol line (escapes, quoted strings with spaces); ValueError if malformed.

    >>> p = parse_line('teleinfo,meter=0123,mode=standard msg1="PAS DE  MESSAGE",east=12i 1700000000')
    >>> p.tags, p.fields, p.time
    ({'meter': '0123', 'mode': 'standard'}, {'msg1': 'PAS DE  MESSAGE', 'east': 12}, 1700000000)
    """
    measurement, i = _scan(line, 0, ", ")
    if not measurement:
        raise ValueError(f"no measurement in {line!r}")
    tags: dict[str, str] = {}
    while i < len(line) and line[i] == ",":
        k, i = _scan(line, i + 1, "=, ")
        if i >= len(line) or line[i] != "=":
            raise ValueError(f"bad tag in {line!r}")
        tags[k], i = _scan(line, i + 1, ", ")
    if i >= len(line) or line[i] != " ":
        raise ValueError(f"no fields in {line!r}")
    fields: dict[str, int | float | str | bool] = {}
    i += 1
    while True:
        k, i = _scan(line, i, "=, ")
        if not k or i >= len(line) or line[i] != "=":
            raise ValueError(f"bad field in {line!r}")
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
                raise ValueError(f"unterminated string in {line!r}")
            fields[k] = "".join(chars)
            i = j + 1
        else:
            j = i
            while j < len(line) and line[j] not in ", ":
                j += 1
            try:
                fields[k] = _field_value(line[i:j])
            except ValueError:
                raise ValueError(f"bad value for {k!r} in {line!r}") from None
            i = j
        if i < len(line) and line[i] == ",":
            i += 1
            continue
        break
    rest = line[i:].strip()
    if not rest:
        return Point(measurement, tags, fields, None)
    try:
        return Point(measurement, tags, fields, int(rest))
    except ValueError:
        raise ValueError(f"bad timestamp in {line!r}") from None
