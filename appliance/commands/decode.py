"""``teleinfo decode``: decode a raw TIC capture (or standard input) into JSON lines or a table."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

CHUNK = 64 * 1024


def register(sub: Any) -> None:
    p = sub.add_parser(
        "decode",
        help="decode a raw TIC capture into JSON lines",
        description=(
            "Read raw TIC bytes from PATH (or - for standard input) and print every complete frame, in order. "
            "Only groups that pass the checksum and format checks appear in 'values'; rejected groups are "
            "listed in 'invalid'. A summary of counts goes to standard error."
        ),
    )
    p.add_argument("path", metavar="PATH", help="raw capture file, or - for standard input")
    p.add_argument(
        "--mode",
        choices=("auto", "historique", "standard"),
        default="auto",
        help="TIC mode (default: detected from the bytes)",
    )
    p.add_argument(
        "--format",
        choices=("jsonl", "table"),
        default="jsonl",
        dest="fmt",
        help="jsonl: one JSON object per frame (default); table: a readable view",
    )
    p.set_defaults(func=run)


def _open(path: str) -> Any:
    return sys.stdin.buffer if path == "-" else open(path, "rb")


def run(args: argparse.Namespace) -> int:
    from appliance.tic import Decoder

    decoder = Decoder(args.mode)
    out = sys.stdout
    # JSON lines go out as bytes, a chunk's frames in one write: the frame's own JSON (Frame.json_bytes), which is
    # what the MQTT state and the multicast datagram carry too.
    binary: IO[bytes] | None = getattr(out, "buffer", None) if args.fmt == "jsonl" else None
    try:
        src = _open(args.path)
    except OSError as e:
        print(f"teleinfo decode: cannot read {args.path}: {e.strerror or e}", file=sys.stderr)
        return 2
    try:
        with src:
            while chunk := src.read1(CHUNK):  # read1: live input (a pipe) is decoded as it arrives
                frames = decoder.feed(chunk)
                if binary is not None:
                    if frames:
                        binary.write(b"".join([f.json_bytes() + b"\n" for f in frames]))
                        binary.flush()
                    continue
                emit = _print_json if args.fmt == "jsonl" else _print_table
                for frame in frames:
                    emit(frame.to_json(), out)
                out.flush()
    except OSError as e:
        print(f"teleinfo decode: error reading {args.path}: {e.strerror or e}", file=sys.stderr)
        return 2
    rejects = ", ".join(f"{k}={v}" for k, v in sorted(decoder.rejects.items())) or "none"
    print(
        f"teleinfo decode: {decoder.frames} frames, {decoder.groups} groups, rejected: {rejects}, "
        f"skipped bytes: {decoder.assembler.stats.skipped_bytes}",
        file=sys.stderr,
    )
    return 0


def _print_json(obj: dict[str, Any], out: IO[str]) -> None:
    out.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")


def _print_table(obj: dict[str, Any], out: IO[str]) -> None:
    units = obj.get("units", {})
    stamps = obj["timestamps"]
    lines = [f"── {obj['mode']} frame, meter {obj['meter'] or '?'}"]
    for label, value in obj["values"].items():
        unit = units.get(label, "")
        when = f"  @ {stamps[label]}" if label in stamps else ""
        lines.append(f"  {label:<10} {value!s:>20} {unit:<4}{when}")
    lines.extend(f"  {label:<10} {stamps[label]:>20}" for label in stamps.keys() - obj["values"].keys())
    if obj["invalid"]:
        lines.append(f"  rejected: {', '.join(obj['invalid'])}")
    out.write("\n".join(lines) + "\n")
