"""``teleinfo simulate``: a simulated Linky meter writing raw TIC bytes to standard output, a file or a pty.

``teleinfo simulate | teleinfo decode -`` shows live decoded frames: every frame is flushed as soon as it is
written.  With ``--realtime`` the bytes leave at the meter's baud rate (1200 Bd historique, 9600 Bd standard), so
a pty or serial port fed this way looks like a meter to any TIC reader.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from datetime import UTC, datetime
from typing import Any

_CONTRACTS = ("BASE", "HCHP", "TEMPO", "EJP")  # appliance.simulator.CONTRACTS, without importing it for --help


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a Linky meter's TIC output",
        description=(
            "Write the raw TIC stream of a simulated Linky meter: a daily load curve, indexes that integrate it, "
            "tariff periods on schedule (HC 22:00-06:00, Tempo colours, EJP peaks), optional transmission errors. "
            "The same --seed and --start always give the same bytes."
        ),
    )
    p.add_argument(
        "--mode", choices=("historique", "standard"), default="historique", help="TIC mode (default: %(default)s)"
    )
    p.add_argument("--phases", type=int, choices=(1, 3), default=1, help="single- or three-phase meter (default: 1)")
    p.add_argument("--contract", choices=_CONTRACTS, default="BASE", help="tariff option (default: %(default)s)")
    p.add_argument("--producer", action="store_true", help="a producer meter (injection data; standard mode only)")
    p.add_argument(
        "--errors",
        type=float,
        default=0.0,
        metavar="RATE",
        help="fraction of frames to corrupt, 0 to 1: bit flips, EOT interruptions, truncations (default: 0)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the load curve, calendars and errors (default: 0)")
    p.add_argument(
        "--start",
        metavar="ISO8601",
        help="simulated start time, e.g. 2024-01-15T21:55 (no offset: Paris local time; default: now)",
    )
    p.add_argument("--frames", type=int, metavar="N", help="stop after N frames (default: never)")
    p.add_argument("--realtime", action="store_true", help="pace the bytes at the mode's baud rate")
    p.add_argument(
        "--output",
        metavar="PATH",
        default="-",
        help="- for standard output (default), a file, or a serial device / pty (opened 7E1 at the baud rate)",
    )
    p.add_argument("--meter-id", metavar="ADS", help="the 12-digit meter address, ADCO/ADSC (default: from the seed)")
    p.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"teleinfo simulate: {message}", file=sys.stderr)
    return 2


def _parse_start(text: str | None) -> datetime:
    """``--start``: ISO 8601; without an offset it is the meter's own (Paris) local time."""
    from appliance.simulator import PARIS

    if text is None:
        return datetime.now(UTC).replace(microsecond=0)
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=PARIS)


def run(args: argparse.Namespace) -> int:
    from itertools import islice

    from appliance.simulator import ErrorInjector, MeterSimulator, open_output, write_frames

    if args.producer and args.mode == "historique":
        return _fail("--producer needs --mode standard: historique TIC carries no production data")
    if not 0.0 <= args.errors <= 1.0:
        return _fail(f"--errors must be between 0 and 1, not {args.errors}")
    if args.frames is not None and args.frames < 1:
        return _fail(f"--frames must be at least 1, not {args.frames}")
    try:
        start = _parse_start(args.start)
    except ValueError:
        return _fail(f"--start is not an ISO 8601 date and time: {args.start!r}")
    try:
        sim = MeterSimulator(
            start=start,
            mode=args.mode,
            phases=args.phases,
            contract=args.contract,
            producer=args.producer,
            seed=args.seed,
            meter_id=args.meter_id,
        )
    except ValueError as e:
        return _fail(str(e))
    try:
        out = open_output(args.output, sim.baudrate)
    except OSError as e:
        return _fail(f"cannot open {args.output}: {e.strerror or e}")
    frames = sim.frames() if args.frames is None else islice(sim.frames(), args.frames)
    injector = ErrorInjector(args.errors, args.seed) if args.errors else None
    try:
        written = write_frames(frames, out, realtime=args.realtime, injector=injector)
    except BrokenPipeError:
        _quiet_stdout()
        return 0  # the reader went away (`teleinfo simulate | head`): not an error of ours
    except OSError as e:  # a pty whose other end closed (EIO), a serial adapter unplugged
        print(f"teleinfo simulate: output closed: {e.strerror or e}", file=sys.stderr)
        return 0
    finally:
        with contextlib.suppress(OSError):
            out.close()
    corrupted = ", ".join(f"{k}={v}" for k, v in sorted(injector.counts.items())) if injector else ""
    print(f"teleinfo simulate: {written} frames, corrupted: {corrupted or 'none'}", file=sys.stderr)
    return 0


def _quiet_stdout() -> None:
    """Point standard output at /dev/null, so the interpreter's final flush does not fail on the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
