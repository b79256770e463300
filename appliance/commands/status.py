"""``teleinfo status``: the appliance's state and counters for people, and a Nagios-style check.

It reads ``GET /status`` from the health socket, so it works against a remote appliance too and sees exactly
what load balancers see (from another machine, only what health needs unless ``health.status_detail = "full"``).
Exit status: 0 up, 1 degraded (reduced weight or drain), 2 down or unreachable; the first line is a Nagios-style
summary with performance data.  The answer is a peer's like any other: whatever it holds, nothing is printed
raw (:mod:`appliance.textsafe`) and an odd document is reported, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

OK, WARNING, CRITICAL = 0, 1, 2
MAX_ANSWER = 1024 * 1024


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show the appliance's state and counters (a Nagios-style check)",
        description=(
            "Ask the health socket for the state and every counter and print them readably. Exit status 0 when "
            "up, 1 when degraded (an output failing: reduced weight or drain), 2 when down (no meter data) or "
            "when the health socket cannot be reached."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="appliance address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=9999, help="health socket port (default: 9999)")
    p.add_argument("--json", action="store_true", help="print the JSON document as received")
    p.add_argument("--timeout", type=float, default=3.0, metavar="S", help="seconds to wait (default: 3)")
    p.set_defaults(func=run)


def fetch(host: str, port: int, timeout: float) -> dict[str, Any]:
    """The ``/status`` document; raises OSError (unreachable) or ValueError (not a health socket's answer)."""
    from appliance import httpclient

    where = f"[{host}]" if ":" in host else host
    try:
        answer = httpclient.get(f"http://{where}:{port}/status", timeout=timeout, max_bytes=MAX_ANSWER)
    except httpclient.HttpError as e:
        raise OSError(e.reason) from None
    if answer.status != 200:
        raise ValueError(f"HTTP {answer.status} {answer.reason}")
    if answer.truncated:
        raise ValueError(f"answer longer than {MAX_ANSWER} bytes")
    doc = json.loads(answer.body)
    if not isinstance(doc, dict) or not isinstance(doc.get("health"), dict):
        raise ValueError("not a teleinfo status document")
    return doc


def exit_status(health: dict[str, Any]) -> int:
    if health.get("state") == "down":
        return CRITICAL
    weight = health.get("weight", 0)
    if health.get("state") != "up" or not isinstance(weight, int | float) or weight < 100:
        return WARNING
    return OK


def run(args: argparse.Namespace) -> int:
    where = f"{args.host}:{args.port}"
    try:
        doc = fetch(args.host, args.port, args.timeout)
    except OSError as e:
        print(f"TELEINFO CRITICAL - health socket {where} unreachable: {e.strerror or e}")
        return CRITICAL
    except ValueError as e:
        print(f"TELEINFO CRITICAL - health socket {where} gave an unexpected answer: {e}")
        return CRITICAL
    return run_document(doc, where, args.json)


def run_document(doc: dict[str, Any], where: str, as_json: bool) -> int:
    """Print a fetched document (JSON or readable), safely; return the exit status."""
    from appliance.textsafe import json_line, printable

    try:
        status = exit_status(doc["health"])
        text = json_line(doc, indent=2) if as_json else "\n".join(map(printable, _render(doc, status, where)))
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError, OSError) as e:
        print(f"TELEINFO CRITICAL - health socket {where} gave an unexpected answer: {type(e).__name__}")
        return CRITICAL
    print(text)
    return status


def _render(doc: dict[str, Any], status: int, where: str) -> list[str]:
    health = doc["health"]
    word = ("OK", "WARNING", "CRITICAL")[status]
    perf = f"frames={doc.get('frames', 0)}c rejects={sum(doc.get('rejects', {}).values())}c"
    age = doc.get("last_frame_age_s")
    if age is not None:
        perf += f" age={age}s;;{health.get('down_after_s', '')}"
    lines = [
        f"TELEINFO {word} - {health.get('line', '?')} | {perf}",
        f"appliance  {where}, version {doc.get('version', '?')}",
    ]
    source = doc.get("source", {})
    lines.append(
        f"source     {source.get('state', '?')} {source.get('mode') or ''}".rstrip()
        + (f", {source['reconnects']} reconnects, {source['bytes']} bytes" if "bytes" in source else "")
        + (f" ({source['detail']})" if source.get("detail") else "")
    )
    rejects = ", ".join(f"{k}={v}" for k, v in sorted(doc.get("rejects", {}).items())) or "none"
    last = "never" if age is None else f"{age:.1f} s ago"
    lines.append(f"frames     {doc.get('frames', 0)} decoded, last {last}; rejected: {rejects}")
    outputs = doc.get("outputs", {})
    if not outputs:
        lines.append("outputs    none")
    for name, o in outputs.items():
        if "sent" not in o:  # what a stranger's /status shows: the state only
            lines.append(f"output     {name} {o.get('state')}")
            continue
        lines.append(
            f"output     {name} {o.get('state')}: sent {o.get('sent')}, failed {o.get('failed')}, "
            f"dropped {o.get('dropped')}, queued {o.get('queued')}, spooled {o.get('spooled')}"
            + (f", spool dropped {o['spool_dropped']}" if o.get("spool_dropped") else "")
            + (f"; last error: {o['last_error']}" if o.get("last_error") and o.get("state") == "failing" else "")
            + (f"; spool error: {o['spool_error']}" if o.get("spool_error") else "")
        )
    known = {"health", "version", "uptime_s", "frames", "groups", "rejects", "last_frame_at", "last_frame_age_s"}
    for key, value in doc.items():
        if key in known or key in ("source", "outputs"):
            continue
        lines.append(f"{key:<10} {_flat(value)}")
    lines.append(f"uptime     {_duration(doc.get('uptime_s', 0))}, {doc.get('groups', 0)} groups decoded")
    return lines


def _flat(value: Any) -> str:
    """A further section (self-checks, control socket...) on one line."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_flat(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return "[" + ", ".join(_flat(v) for v in value) + "]"
    return str(value)


def _duration(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f} days"
