"""What a self-check reports, and its InfluxDB line protocol (docs/DATA_FORMAT.md, section 5).

Every check gives :class:`CheckResult` objects: one status (``ok``, ``problem``: the check ran and found
something wrong, ``error``: it could not run) with a one-line message for people, JSON-ready details for scripts
and the health socket, and the fields of its own measurement.  Field types never change from one result to the
next (a field absent from one point is simply absent, never written with another type), because InfluxDB refuses
a point whose field changed type.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final

from appliance.lineproto import FieldValue, encode_line

__all__ = ["ERROR", "OK", "PROBLEM", "STATUS_CODES", "CheckResult", "exit_status", "to_lines"]

OK: Final = "ok"
PROBLEM: Final = "problem"
ERROR: Final = "error"
#: Exit status of ``teleinfo check`` and the ``code`` field: the worst one wins.
STATUS_CODES: Final = {OK: 0, PROBLEM: 1, ERROR: 2}


@dataclass(slots=True)
class CheckResult:
    """One finding of one check about one target.

    ``check`` is ``public_ip``, ``ports`` or ``peers``; ``target`` names what was checked (``public`` for the
    public IP, the scanned host for ports, ``<peer>/<host>`` for peers); ``measurement``/``tags``/``fields``
    are the check's own point, written next to the common ``teleinfo_check`` point.
    """

    check: str
    target: str
    status: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    measurement: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    fields: dict[str, FieldValue] = field(default_factory=dict)
    at: float = field(default_factory=time.time)
    duration_s: float = 0.0

    @property
    def code(self) -> int:
        return STATUS_CODES[self.status]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``teleinfo check --format json``, the health socket's ``checks`` section)."""
        return {
            "check": self.check,
            "target": self.target,
            "status": self.status,
            "message": self.message,
            "at": round(self.at, 3),
            "duration_s": round(self.duration_s, 3),
            **self.details,
        }


def exit_status(results: list[CheckResult]) -> int:
    """0 when every check passed, 1 when one found a problem, 2 when one could not run (the worst wins)."""
    return max((r.code for r in results), default=0)


def to_lines(results: list[CheckResult]) -> list[str]:
    """Line protocol with second precision: a ``teleinfo_check`` point per result, plus its own point."""
    lines: list[str] = []
    for r in results:
        ts = int(r.at)
        common: dict[str, FieldValue] = {
            "status": r.status,
            "code": r.code,
            "duration_s": float(r.duration_s),
            "message": r.message,
        }
        lines.append(encode_line("teleinfo_check", {"check": r.check, "target": r.target}, common, ts))
        if r.measurement and r.fields:
            lines.append(encode_line(f"teleinfo_{r.measurement}", r.tags, r.fields, ts))
    return lines
