"""The tariff record as InfluxDB line protocol (docs/DATA_FORMAT.md section 7): what the InfluxDB output writes.

Two measurements, second precision, timestamp = the record's instant, tag ``meter``:

* ``teleinfo_tariff``: one point per record, the period and price now, the Tempo colours, and the day's and the
  month's totals;
* ``teleinfo_tariff_period``: one point per period (tag ``period``) of the contract, and any other period
  counted this month: its energy and cost today and this month.

Field types never change: energy is an integer (Wh), money a float, a code a string; a value that is unknown (no
price) leaves its field out rather than writing another type.  A period without energy today is written with
``today_wh = 0`` and ``today_cost = 0.0``: nothing was counted, so its cost is zero whatever its price.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from appliance.lineproto import FieldValue, encode_line
from appliance.records import TariffRecord
from appliance.tariff.periods import CONTRACT_PERIODS, PERIODS
from appliance.tariff.publisher import RECORDS_PER_HOUR

__all__ = [
    "LANE_LINES",
    "MAX_LINES_PER_RECORD",
    "OUTAGE_HOURS",
    "PERIOD_MEASUREMENT",
    "TARIFF_MEASUREMENT",
    "record_periods",
    "tariff_lines",
]

TARIFF_MEASUREMENT: Final = "teleinfo_tariff"
PERIOD_MEASUREMENT: Final = "teleinfo_tariff_period"
#: Lines one record makes at most: its ``teleinfo_tariff`` point, and one per period (the eleven, and unattributed).
MAX_LINES_PER_RECORD: Final = 2 + len(PERIODS)
#: How long the InfluxDB server may be unreachable without a tariff point lost, whatever the contract: the
#: InfluxDB output keeps this many hours of records in memory (its record lane for the tariff kind), so an outage
#: across midnight keeps the day's closing point.  A longer outage drops the oldest, counted (docs/DATA_FORMAT.md 7).
OUTAGE_HOURS: Final = 26
#: That lane, in lines: 26 h x 64 records x 13 lines = 21,632 lines, 4.5 MB at most (measured in
#: tests/test_tariff_service.py); a Tempo meter's 7-line records fill it in 48 h, a BASE meter's 2-line ones in a week.
LANE_LINES: Final = OUTAGE_HOURS * RECORDS_PER_HOUR * MAX_LINES_PER_RECORD


def record_periods(snapshot: Mapping[str, Any]) -> list[str]:
    """The periods a record speaks of: its contract's, then any other counted today or this month, in order."""
    periods = list(CONTRACT_PERIODS.get(str(snapshot.get("contract")), ()))
    for totals in (snapshot.get("today") or {}, snapshot.get("month") or {}):
        periods += [p for p in (totals.get("periods") or {}) if p not in periods]
    return periods


def _money(value: Any) -> float | None:
    return None if value is None else float(value)


def _totals(fields: dict[str, FieldValue], prefix: str, totals: Mapping[str, Any]) -> None:
    fields[f"{prefix}_wh"] = int(totals.get("wh") or 0)
    fields[f"{prefix}_unpriced_wh"] = int(totals.get("unpriced_wh") or 0)
    for key in ("cost", "subscription", "total"):
        value = _money(totals.get(key))
        if value is not None:
            fields[f"{prefix}_{key}"] = value


def tariff_lines(record: TariffRecord) -> list[str]:
    """The record's points; none before the meter is known (like a frame without a meter)."""
    if record.meter is None:
        return []
    snap = record.snapshot
    ts = int(record.at)
    tags = {"meter": record.meter}
    fields: dict[str, FieldValue] = {"currency": str(snap.get("currency") or "")}
    for key in ("contract", "period"):
        if snap.get(key) is not None:
            fields[key] = str(snap[key])
    price = snap.get("price")
    if price is not None:
        fields["price"] = float(price["value"])
        fields["price_default"] = price.get("origin") == "default"
    tempo = snap.get("tempo") or {}
    for key in ("today", "tomorrow"):
        if tempo.get(key) is not None:
            fields[f"tempo_{key}"] = str(tempo[key])
    today, month = snap.get("today") or {}, snap.get("month") or {}
    _totals(fields, "today", today)
    _totals(fields, "month", month)
    lines = [encode_line(TARIFF_MEASUREMENT, tags, fields, ts)]
    for period in record_periods(snap):
        per: dict[str, FieldValue] = {}
        for prefix, totals in (("today", today), ("month", month)):
            entry = (totals.get("periods") or {}).get(period)
            per[f"{prefix}_wh"] = int(entry["wh"]) if entry else 0
            cost = _money(entry["cost"]) if entry else 0.0
            if cost is not None:
                per[f"{prefix}_cost"] = cost
        lines.append(encode_line(PERIOD_MEASUREMENT, tags | {"period": period}, per, ts))
    return lines
