"""``teleinfo listen``: join the multicast group and print the frames that arrive, from any machine on the LAN.

It is the quickest way to check that the appliance publishes, and what a consumer receives.  Line protocol is
shown as one compact summary per point (the lines of a split frame are grouped back by series and timestamp),
or as the raw lines with ``--raw``; JSON parts are reassembled into whole frames, one JSON object per line.
``--count`` always counts frames, whatever the format.

Whatever arrives on the port is a stranger's: no datagram can stop it (malformed JSON or line protocol, JSON
nested too deep, lone surrogates, out-of-range timestamps, odd types: each is counted and skipped with a warning),
the JSON parts it keeps for reassembly are bounded in count and bytes and expire on a timer even while nothing
arrives, and nothing from the network reaches the terminal unescaped (:mod:`appliance.textsafe`).

Exit status: 0 when done (``--count`` frames, ``--timeout`` elapsed without ``--count``, or Ctrl-C), 1 when
``--timeout`` elapsed before ``--count`` frames arrived, 2 on a bad group, port or interface.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from appliance.lineproto import Point
    from appliance.outputs.multicast.parts import JsonReassembler

#: A split frame's datagrams leave back to back; this much silence means its point is complete.
POINT_QUIET: Final = 0.2
#: Incomplete JSON frames are looked at this often even while nothing arrives (their memory is released).
EXPIRE_EVERY: Final = 1.0

#: Fields shown first in a summary, when present (power, currents, voltages, tariff period, main indexes).
HEADLINE: Final = (
    "papp",
    "sinsts",
    "sinsti",
    "iinst",
    "iinst1",
    "iinst2",
    "iinst3",
    "irms1",
    "irms2",
    "irms3",
    "urms1",
    "urms2",
    "urms3",
    "ptec",
    "ltarf",
    "base",
    "hchc",
    "hchp",
    "east",
    "eait",
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be at most 65535 (got {value})")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive (got {text})")
    return value


def register(sub: Any) -> None:
    from appliance.outputs.multicast.config import MulticastConfig

    defaults = MulticastConfig()
    p = sub.add_parser(
        "listen",
        help="print the frames an appliance sends to the multicast group",
        description=(
            "Join the multicast group and print every frame received: a compact summary per point for line "
            "protocol (the raw lines with --raw), one JSON object per frame for JSON (parts reassembled). Run it "
            "on any machine of the appliance's network. Exit status: 0 done, 1 --timeout before --count frames, "
            "2 bad group or interface."
        ),
    )
    p.add_argument("--group", default=defaults.group, help=f"multicast group (default: {defaults.group})")
    p.add_argument("--port", type=_port, default=defaults.port, help=f"UDP port (default: {defaults.port})")
    p.add_argument(
        "--interface",
        default="0.0.0.0",  # noqa: S104 - an interface to join on, not a bind address
        metavar="IP",
        help="address (or name) of the interface to join on (default: 0.0.0.0, the system's choice)",
    )
    p.add_argument(
        "--format",
        choices=("auto", "influx", "json"),
        default="auto",
        dest="fmt",
        help="what the sender sends (default: auto, told apart per datagram)",
    )
    p.add_argument("--count", type=_positive_int, metavar="N", help="stop after N frames")
    p.add_argument("--timeout", type=_seconds, metavar="S", help="stop after S seconds")
    p.add_argument("--raw", action="store_true", help="print datagrams as received: no summary, no reassembly")
    p.set_defaults(func=run)


class _Printer:
    """Turns datagrams into printed frames and counts the frames completed."""

    def __init__(self, fmt: str, raw: bool, out: IO[str], err: IO[str]) -> None:
        from appliance.outputs.multicast.parts import JsonReassembler

        self.fmt = fmt
        self.raw = raw
        self.out = out
        self.err = err
        self.frames = 0
        self.reassembler: JsonReassembler = JsonReassembler()
        self.point: Point | None = None  # the line-protocol point being received (it may span datagrams)
        self.lines: list[str] = []  # its raw lines, printed with it so --count never shows part of the next

    def feed(self, data: bytes, source: Any) -> None:
        fmt = self.fmt
        if fmt == "auto":
            fmt = "json" if data.lstrip()[:1] == b"{" else "influx"
        if fmt == "json":
            self.flush()
            self._json(data, source)
        else:
            self._influx(data, source)
        self.out.flush()

    def _json(self, data: bytes, source: Any) -> None:
        from appliance.textsafe import json_line, printable

        invalid = self.reassembler.invalid
        frames = self.reassembler.feed(data, source)
        if self.reassembler.invalid != invalid:
            self._warn(source, "not a JSON frame")
        if self.raw:
            self.out.write(printable(data.decode("utf-8", "replace")) + "\n")
        else:
            for obj in frames:
                try:
                    line = json_line(obj)
                except (ValueError, RecursionError):
                    self._warn(source, "a JSON frame that cannot be shown")
                    continue
                self.out.write(line + "\n")
        self.frames += len(frames)

    def _influx(self, data: bytes, source: Any) -> None:
        from appliance.lineproto import Point, parse_line

        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self._warn(source, "not UTF-8")
            return
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            try:
                point = parse_line(line)
            except ValueError as e:
                self._warn(source, str(e))
                continue
            if self.point is not None and self.point.key == point.key:
                self.point = Point(point.measurement, point.tags, {**self.point.fields, **point.fields}, point.time)
            else:
                self.flush()
                self.point = point
            self.lines.append(line)

    def flush(self) -> None:
        """The pending line-protocol point is complete: print its summary and count it."""
        from appliance.textsafe import printable

        if self.point is None:
            return
        lines = self.lines if self.raw else [summary(self.point)]
        self.out.write("".join(printable(line) + "\n" for line in lines))
        self.out.flush()
        self.point = None
        self.lines = []
        self.frames += 1

    def _warn(self, source: Any, why: str) -> None:
        from appliance.textsafe import printable

        who = f"{source[0]}:{source[1]}" if isinstance(source, tuple) else "?"
        print(f"teleinfo listen: ignored a datagram from {who}: {printable(why, 200)}", file=self.err)


def _seconds_of(timestamp: int) -> float:
    """POSIX seconds from a timestamp of unknown precision (the listener is not told the sender's)."""
    for scale in (1_000_000_000, 1_000_000, 1_000):
        if timestamp >= 100_000_000 * scale:  # beyond 1973 in that unit
            return timestamp / scale
    return float(timestamp)


def _units() -> dict[tuple[str, str], str]:
    from appliance.lineproto import field_key
    from appliance.tic import HISTORIQUE, STANDARD

    return {
        (mode, field_key(label)): spec.unit
        for mode, table in (("historique", HISTORIQUE), ("standard", STANDARD))
        for label, spec in table.items()
        if spec.unit
    }


_UNITS: dict[tuple[str, str], str] = {}


def summary(point: Point) -> str:
    """One readable line: local time, tags, the headline fields with units, and how many more fields."""
    if not _UNITS:
        _UNITS.update(_units())
    try:
        when = "no time" if point.time is None else datetime.fromtimestamp(_seconds_of(point.time)).strftime("%H:%M:%S")
    except (ValueError, OverflowError, OSError):  # a time no calendar holds (the year 30,000, before 1 AD...)
        when = "bad time"
    tags = " ".join(f"{k}={v}" for k, v in point.tags.items())
    mode = point.tags.get("mode", "")
    keys = [k for k in HEADLINE if k in point.fields] or list(point.fields)[:6]
    shown = []
    for key in keys:
        unit = _UNITS.get((mode, key))
        value = point.fields[key]
        text = f'"{value}"' if isinstance(value, str) else str(value)
        shown.append(f"{key}={text}{' ' + unit if unit else ''}")
    more = len(point.fields) - len(keys)
    return f"{when} {point.measurement} {tags}  " + "  ".join(shown) + (f"  (+{more} fields)" if more else "")


def run(args: argparse.Namespace) -> int:
    from appliance.outputs.multicast.receiver import open_receiver

    try:
        sock = open_receiver(args.group, args.port, args.interface)
    except (OSError, ValueError) as e:
        print(f"teleinfo listen: {e}", file=sys.stderr)
        return 2
    err = sys.stderr
    print(
        f"teleinfo listen: listening on {args.group}:{args.port} (interface {args.interface})"
        + ("" if args.timeout else ", Ctrl-C to stop"),
        file=err,
        flush=True,
    )
    printer = _Printer(args.fmt, args.raw, sys.stdout, err)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    timed_out = False
    try:
        with sock:
            while args.count is None or printer.frames < args.count:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    printer.flush()
                    timed_out = True
                    break
                wait = EXPIRE_EVERY if deadline is None else min(deadline - now, EXPIRE_EVERY)
                if printer.point is not None:
                    wait = min(wait, POINT_QUIET)
                sock.settimeout(wait)
                try:
                    data, source = sock.recvfrom(65535)
                except TimeoutError:
                    printer.reassembler.expire()
                    if printer.point is not None:
                        printer.flush()
                    continue
                printer.feed(data, source)
    except KeyboardInterrupt:
        printer.flush()  # Ctrl-C is how a watch ends: not an error
    if timed_out and args.count is not None and printer.frames < args.count:
        print(f"teleinfo listen: timeout: {printer.frames} of {args.count} frames received", file=err)
        return 1
    return 0
