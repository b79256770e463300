"""The live page's data contract (docs/WEB.md): the JSON snapshot and the Server-Sent Events payloads.

Pure builders, shared by whatever serves the page (the appliance's web server, appliance/web/server.py, and the
tests' stand-in), so the two can never disagree on a field.  Nothing personal leaves through them: no meter address, no
PRM (the same rule as the health socket's).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from appliance import __version__
from appliance.tariff.engine import TariffEngine
from appliance.web.history import PowerHistory

__all__ = ["frame_payload", "power_of", "snapshot_payload", "sse_event", "status_payload"]


def _int(values: Mapping[str, object], label: str) -> int | None:
    v = values.get(label)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def power_of(mode: str, values: Mapping[str, object]) -> int | None:
    """The apparent power drawn now, in VA: SINSTS (standard) or PAPP (historique)."""
    return _int(values, "SINSTS" if mode == "standard" else "PAPP")


def _phases(mode: str, values: Mapping[str, object]) -> list[dict[str, Any]]:
    if mode == "standard":
        three = "IRMS2" in values or "URMS2" in values or "SINSTS2" in values
        if not three:
            return [{"phase": 1, "power_va": _int(values, "SINSTS"), "current_a": _int(values, "IRMS1"),
                     "voltage_v": _int(values, "URMS1")}]  # fmt: skip
        return [
            {
                "phase": n,
                "power_va": _int(values, f"SINSTS{n}"),
                "current_a": _int(values, f"IRMS{n}"),
                "voltage_v": _int(values, f"URMS{n}"),
            }
            for n in (1, 2, 3)
        ]
    if "IINST1" in values or "IINST2" in values:
        return [
            {"phase": n, "power_va": None, "current_a": _int(values, f"IINST{n}"), "voltage_v": None} for n in (1, 2, 3)
        ]
    return [{"phase": 1, "power_va": _int(values, "PAPP"), "current_a": _int(values, "IINST"), "voltage_v": None}]


def frame_payload(
    mode: str, values: Mapping[str, object], at: datetime, tariff: TariffEngine | None = None
) -> dict[str, Any]:
    """The ``frame`` event: what the page shows of one frame, with the tariff period and price it implies.

    The period is the frame's own (PTEC, NTARF through the calendar), read without counting anything, so the page
    shows it even while the engine waits for the clock."""
    reading = tariff.read(mode, values) if tariff is not None else None
    period = reading.period if reading is not None else None
    price = tariff.price_at(period, at) if tariff is not None else None
    return {
        "at": at.isoformat(timespec="seconds"),
        "mode": mode,
        "power_va": power_of(mode, values),
        "injected_va": _int(values, "SINSTI"),
        "phases": _phases(mode, values),
        "period": period,
        "period_label": reading.period_label if reading is not None else None,
        "price": None if price is None else price.to_json(),
    }


def status_payload(uptime_s: float, health: Mapping[str, Any], stats: Mapping[str, Any]) -> dict[str, Any]:
    """The ``status`` event: version, uptime, health, and the outputs and self-checks at a glance.

    ``health`` is ``{"state": "up"|"drain"|"down", "line": ...}``; ``stats`` a :meth:`StatsSnapshot.to_json`
    (redacted: :func:`appliance.health.public_snapshot`).  ``tariff`` is the tariff engine's state word
    (``waiting_for_clock``...) when it runs, else None.
    """
    outputs = {
        str(name): {"state": o.get("state"), "last_error": o.get("last_error")}
        for name, o in dict(stats.get("outputs") or {}).items()
        if isinstance(o, Mapping)
    }
    checks_in = stats.get("checks")
    checks: dict[str, Any] | None = None
    if isinstance(checks_in, Mapping):
        last = checks_in.get("last") or {}
        checks = {
            "status": checks_in.get("status"),
            "last": {str(k): {"status": v.get("status"), "at": v.get("at")} for k, v in dict(last).items()},
        }
    tariff_in = stats.get("tariff")
    return {
        "version": __version__,
        "uptime_s": round(uptime_s, 1),
        "health": {"state": health.get("state"), "line": health.get("line")},
        "outputs": outputs,
        "checks": checks,
        "tariff": {"state": tariff_in.get("state")} if isinstance(tariff_in, Mapping) else None,
    }


def snapshot_payload(
    now: datetime,
    *,
    frame: Mapping[str, Any] | None,
    frame_age_s: float | None,
    tariff: TariffEngine | Mapping[str, Any] | None,
    history: PowerHistory,
    status: Mapping[str, Any],
) -> dict[str, Any]:
    """``GET /api/snapshot``: everything the page shows, at once (first load, and after a reconnection).

    ``tariff`` is the engine (its snapshot now) or a snapshot it made (the server's thread never touches the
    engine, which belongs to the reader's)."""
    if isinstance(tariff, TariffEngine):
        tariff = tariff.snapshot(now)
    return {
        "now": now.isoformat(timespec="seconds"),
        "frame": None if frame is None else {**frame, "age_s": None if frame_age_s is None else round(frame_age_s, 1)},
        "tariff": None if tariff is None else dict(tariff),
        "history": history.to_json(now.timestamp()),
        "status": dict(status),
    }


def sse_event(event: str, data: Mapping[str, Any] | list[Any]) -> bytes:
    """One Server-Sent Event: ``event:`` and a single ``data:`` line (compact JSON holds no newline)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
