#!/usr/bin/env python3
"""The Grafana dashboards of the appliance, generated from this file (the JSON next to it is its output).

Why a generator: the energy dashboard repeats the same InfluxQL for two dozen tariff indexes, per period and per
month; writing them once here keeps every query consistent, and ``tests/test_grafana.py`` checks that the
committed JSON is exactly what this file produces, then runs every query against a real influxd.

    python3 grafana/generate.py            # rewrite grafana/dashboards/*.json
    python3 grafana/generate.py --check    # exit 1 if a committed file differs from the output

Rules every panel follows (the reasons are in grafana/README.md):

* InfluxQL only (InfluxDB 1.8, 2.x through DBRP mapping, 3.x); the data source is the ``${datasource}`` variable.
* One query per field: a field the meter does not send returns no series at all, so a BASE meter's panels show
  BASE and nothing else, without listing two dozen empty series.  Energy queries add ``"<field>" > 0``: standard
  meters send all ten EASF and four EASD registers, the unused ones stay at 0.
* ``fill(null)`` and ``spanNulls: false``: missing data is a gap, never a line drawn across it.
* Energy per period is ``spread()`` of the index in the period (the meter's own Wh counter, not an integral of the
  power), grouped in the ``${tz}`` time zone; ``time($period, 4d)`` makes weeks start on Monday (InfluxQL weeks
  start on Thursday, 1970-01-01) and changes nothing for days (the offset is taken modulo the interval).
"""

# The InfluxQL here is built from this file's constants only and run by Grafana, never from input: no injection.
# ruff: noqa: S608

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DASHBOARD_DIR = HERE / "dashboards"
SCHEMA_VERSION = 39  # Grafana 10.x/11.x dashboard JSON
MEASUREMENT = "teleinfo"  # [outputs.influxdb] measurement: change it here and regenerate if you changed it there

DS: dict[str, str] = {"type": "influxdb", "uid": "${datasource}"}
METER = '"meter" =~ /^${meter}$/'
BY_PERIOD = "GROUP BY time($period, 4d) fill(null) tz('${tz}')"
BY_GROUPING = "GROUP BY time($grouping) fill(null)"

# Historique indexes (field, legend), by contract: BASE, HC/HP, EJP, Tempo.
HIST_INDEXES: tuple[tuple[str, str], ...] = (
    ("base", "BASE"),
    ("hchc", "Heures creuses (HCHC)"),
    ("hchp", "Heures pleines (HCHP)"),
    ("ejphn", "EJP heures normales (EJPHN)"),
    ("ejphpm", "EJP pointe mobile (EJPHPM)"),
    ("bbrhcjb", "Tempo HC bleu (BBRHCJB)"),
    ("bbrhpjb", "Tempo HP bleu (BBRHPJB)"),
    ("bbrhcjw", "Tempo HC blanc (BBRHCJW)"),
    ("bbrhpjw", "Tempo HP blanc (BBRHPJW)"),
    ("bbrhcjr", "Tempo HC rouge (BBRHCJR)"),
    ("bbrhpjr", "Tempo HP rouge (BBRHPJR)"),
)
# Standard mode: supplier indexes (what the bill counts) and distributor indexes (what the network counts).
STD_SUPPLIER: tuple[tuple[str, str], ...] = tuple((f"easf{i:02d}", f"EASF{i:02d}") for i in range(1, 11))
STD_DISTRIBUTOR: tuple[tuple[str, str], ...] = tuple((f"easd{i:02d}", f"EASD{i:02d}") for i in range(1, 5))

# Tempo colours: PTEC (historique, today), DEMAIN (historique, tomorrow) and STGE bits 24-27 (standard): the
# second hex digit of STGE is today's colour (bits 24-25) + 4 x tomorrow's (bits 26-27); 1 blue, 2 white, 3 red.
BLUE, WHITE, RED, UNKNOWN = ("BLEU", "blue"), ("BLANC", "#e0e0e0"), ("ROUGE", "red"), ("not announced yet", "text")
_HEX6 = "[0-9A-Fa-f]{6}$"
TEMPO_TODAY: tuple[tuple[str, tuple[str, str]], ...] = (
    ("^H[CP]JB$", BLUE),
    ("^H[CP]JW$", WHITE),
    ("^H[CP]JR$", RED),
    ("^.[159Dd]" + _HEX6, BLUE),
    ("^.[26AaEe]" + _HEX6, WHITE),
    ("^.[37BbFf]" + _HEX6, RED),
)
TEMPO_TOMORROW: tuple[tuple[str, tuple[str, str]], ...] = (
    ("^BLEU$", BLUE),
    ("^BLAN$", WHITE),
    ("^ROUG$", RED),
    ("^----$", UNKNOWN),
    ("^.[4-7]" + _HEX6, BLUE),
    ("^.[89AaBb]" + _HEX6, WHITE),
    ("^.[C-Fc-f]" + _HEX6, RED),
    ("^.[0-3]" + _HEX6, UNKNOWN),
)
# Self-checks run every 15 minutes (public IP) to an hour (ports, peers): a result holds until the next one, and
# only a longer silence (a missed run, the appliance down) is shown as a gap.  Milliseconds, Grafana's unit here.
CHECK_SPAN_MS = 2 * 3600 * 1000
CHECK_CODES = {"0": ("ok", "green"), "1": ("problem", "orange"), "2": ("error", "red")}


# --- building blocks ----------------------------------------------------------------------------------------------


def target(query: str, alias: str = "", fmt: str = "time_series") -> dict[str, Any]:
    """A raw InfluxQL query (refId assigned by :func:`panel`)."""
    t: dict[str, Any] = {"datasource": DS, "query": query, "rawQuery": True, "resultFormat": fmt}
    if alias:
        t["alias"] = alias
    return t


def field_query(agg: str, field: str, alias: str, *, where: str = "", group: str = BY_GROUPING) -> dict[str, Any]:
    """``agg("field")`` of the selected meter, one series named ``alias``."""
    extra = f" AND {where}" if where else ""
    q = f'SELECT {agg}("{field}") AS "{alias}" FROM "{MEASUREMENT}" WHERE {METER}{extra} AND $timeFilter'
    return target(f"{q} {group}".rstrip(), alias)


def index_query(field: str, alias: str, group: str = BY_PERIOD) -> dict[str, Any]:
    """Energy counted by one index: its spread, only where it counts (an unused index stays at 0)."""
    return field_query("spread", field, alias, where=f'"{field}" > 0', group=group)


def regex_mappings(rules: tuple[tuple[str, tuple[str, str]], ...]) -> list[dict[str, Any]]:
    """Regex value mappings; each pattern matches the whole value, which Grafana replaces with the text."""
    return [
        {"type": "regex", "options": {"pattern": p, "result": {"text": text, "color": color, "index": i}}}
        for i, (p, (text, color)) in enumerate(rules)
    ]


def value_mappings(values: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "value",
            "options": {v: {"text": t, "color": c, "index": i} for i, (v, (t, c)) in enumerate(values.items())},
        }
    ]


def colour_overrides(colours: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "matcher": {"id": "byName", "options": name},
            "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": colour}}],
        }
        for name, colour in colours.items()
    ]


def unit_overrides(units: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": unit}]}
        for name, unit in units.items()
    ]


def _graph_style(bars: bool, stacked: bool, points: str, span_nulls: bool | int) -> dict[str, Any]:
    return {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 80 if bars else 10,
        "lineInterpolation": "linear",
        "showPoints": points,
        "pointSize": 4,
        "spanNulls": span_nulls,  # False: a gap in the data stays a gap
        "insertNulls": False,
        "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
        "axisPlacement": "auto",
        "barAlignment": 1,  # a bar covers its period, which starts at its timestamp
        "gradientMode": "none",
    }


def panel(
    kind: str,
    title: str,
    targets: list[dict[str, Any]],
    *,
    unit: str = "short",
    w: int = 12,
    h: int = 8,
    description: str = "",
    decimals: int | None = None,
    mappings: list[dict[str, Any]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    bars: bool = False,
    stacked: bool = False,
    points: str = "auto",
    span_nulls: bool | int = False,
    time_from: str | None = None,
    time_shift: str | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A panel; ``gridPos`` and ``id`` are set by :func:`layout`."""
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i) if i < 26 else f"A{i}"
    defaults: dict[str, Any] = {"unit": unit, "mappings": mappings or [], "color": {"mode": "palette-classic"}}
    if decimals is not None:
        defaults["decimals"] = decimals
    if kind == "timeseries":
        defaults["custom"] = _graph_style(bars, stacked, points, span_nulls)
    elif kind == "state-timeline":
        defaults["custom"] = {"fillOpacity": 80, "lineWidth": 0, "spanNulls": span_nulls}
        defaults["color"] = {"mode": "thresholds"}
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "text", "value": None}]}
    elif kind in ("stat", "bargauge"):
        defaults["color"] = {"mode": "fixed", "fixedColor": "text"} if mappings else {"mode": "palette-classic"}
    p: dict[str, Any] = {
        "type": kind,
        "title": title,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": _options(kind) | (options or {}),
    }
    if description:
        p["description"] = description
    if time_from:
        p["timeFrom"] = time_from
    if time_shift:
        p["timeShift"] = time_shift
    p["_size"] = (w, h)
    return p


def _options(kind: str) -> dict[str, Any]:
    if kind == "timeseries":
        return {
            "legend": {"showLegend": True, "displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi", "sort": "none"},
        }
    if kind in ("stat", "bargauge"):
        reduce = {"values": False, "calcs": ["lastNotNull"], "fields": "/.*/"}
        if kind == "bargauge":
            return {"reduceOptions": reduce, "orientation": "horizontal", "displayMode": "basic", "showUnfilled": True}
        return {"reduceOptions": reduce, "textMode": "value_and_name", "colorMode": "value", "graphMode": "none"}
    if kind == "state-timeline":
        return {"showValue": "auto", "mergeValues": True, "rowHeight": 0.9, "legend": {"showLegend": False}}
    if kind == "table":
        return {"showHeader": True, "cellHeight": "sm"}
    raise ValueError(kind)


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Place panels left to right, wrapping at 24 columns; ids from 1, in order."""
    x = y = line = 0
    for pid, p in enumerate(panels, start=1):
        w, h = p.pop("_size")
        if p["type"] == "row" or x + w > 24:
            x, y, line = 0, y + line, 0
        p["id"] = pid
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x, line = x + w, max(line, h)
        if p["type"] == "row":
            x, y, line = 0, y + h, 0
    return panels


def datasource_variable() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "InfluxDB",
        "type": "datasource",
        "query": "influxdb",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def interval_variable(name: str, label: str, values: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "interval",
        "query": values,
        "auto": True,
        "auto_count": 200,
        "auto_min": "1m",
        "current": {"text": "auto", "value": f"$__auto_interval_{name}"},
        "options": [],
        "hide": 0,
        "refresh": 2,
    }


def custom_variable(name: str, label: str, values: list[tuple[str, str]]) -> dict[str, Any]:
    """A fixed choice; ``values`` are (text, value), the first one selected."""
    options = [{"text": t, "value": v, "selected": i == 0} for i, (t, v) in enumerate(values)]
    return {
        "name": name,
        "label": label,
        "type": "custom",
        "query": ",".join(f"{t} : {v}" for t, v in values),
        "current": {"text": values[0][0], "value": values[0][1]},
        "options": options,
        "hide": 0,
    }


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: list[dict[str, Any]],
    panels: list[dict[str, Any]],
    time_from: str,
    refresh: str,
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["teleinfo", "linky"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "refresh": refresh,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "monday",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": variables},
        "panels": layout(panels),
    }


# --- the energy dashboard -------------------------------------------------------------------------------------------

TEMPO_COLOURS = {
    label: colour
    for (field, label), colour in zip(
        HIST_INDEXES[5:], ("dark-blue", "blue", "#b0b0b0", "#e0e0e0", "dark-red", "red"), strict=True
    )
}


# The tariff engine's points (docs/DATA_FORMAT.md section 7): one teleinfo_tariff point per record, one
# teleinfo_tariff_period point per period; the last point of each local day holds the day's whole total.
TARIFF = "teleinfo_tariff"
TARIFF_PERIOD = "teleinfo_tariff_period"
BY_DAY_PERIOD = "GROUP BY time(1d), \"period\" fill(null) tz('${tz}')"
BY_PERIOD_TAG = 'GROUP BY "period"'
CURRENCY_UNIT = "currencyEUR"  # tariff.currency's default; change it here (Grafana unit ids) for another currency
PERIOD_COLOURS = {
    "tempo_blue_hc": "dark-blue",
    "tempo_blue_hp": "blue",
    "tempo_white_hc": "#b0b0b0",
    "tempo_white_hp": "#e0e0e0",
    "tempo_red_hc": "dark-red",
    "tempo_red_hp": "red",
    "hc": "green",
    "hp": "orange",
    "base": "yellow",
    "ejp_normal": "green",
    "ejp_peak": "red",
}


def tariff_query(measurement: str, agg: str, field: str, alias: str, group: str = "") -> dict[str, Any]:
    """``agg("field")`` of the selected meter's tariff points, named ``alias`` (``$tag_period``: one series per
    period, the column keeping the field's name)."""
    name = field if alias.startswith("$") else alias
    q = f'SELECT {agg}("{field}") AS "{name}" FROM "{measurement}" WHERE {METER} AND $timeFilter {group}'
    return target(q.rstrip(), alias)


def cost_panels() -> list[dict[str, Any]]:
    """The cost row: the price now and over time, today's and this month's cost, energy and cost per tariff
    period per day and per month, from the tariff engine's points (not from the meter's indexes: the engine
    has already split every index by period and day, priced each day at the prices in force that day, and
    added the subscription)."""
    per_period = {"overrides": colour_overrides(PERIOD_COLOURS)}
    return [
        row("Costs"),
        panel(
            "stat",
            "Price now (per kWh)",
            [tariff_query(TARIFF, "last", "price", "price")],
            unit=CURRENCY_UNIT,
            decimals=4,
            w=6,
            h=5,
            description="Price per kWh of the tariff period in force (tariff.prices, or the dated regulated "
            "defaults): what Home Assistant's Energy dashboard also gets as the current price.",
        ),
        panel(
            "stat",
            "Cost today",
            [
                tariff_query(TARIFF, "last", "today_total", "with subscription"),
                tariff_query(TARIFF, "last", "today_cost", "energy"),
            ],
            unit=CURRENCY_UNIT,
            decimals=2,
            w=6,
            h=5,
            description="Today (local day): the cost of the energy counted, and with today's share of the "
            "monthly subscription.",
        ),
        panel(
            "stat",
            "Cost this month",
            [
                tariff_query(TARIFF, "last", "month_total", "with subscription"),
                tariff_query(TARIFF, "last", "month_cost", "energy"),
            ],
            unit=CURRENCY_UNIT,
            decimals=2,
            w=6,
            h=5,
            description="This month to date: energy cost, and with the subscription.",
        ),
        panel(
            "stat",
            "Energy this month",
            [tariff_query(TARIFF, "last", "month_wh", "energy")],
            unit="watth",
            w=6,
            h=5,
            description="Energy counted this month, all periods.",
        ),
        panel(
            "timeseries",
            "Energy per day by tariff period",
            [tariff_query(TARIFF_PERIOD, "last", "today_wh", "$tag_period", BY_DAY_PERIOD)],
            unit="watth",
            bars=True,
            stacked=True,
            description="Energy per local day (${tz}) and tariff period, as the tariff engine counted it from "
            "the meter's own indexes (docs/TARIFF.md): the last value of each day is that day's total.",
            **per_period,
        ),
        panel(
            "timeseries",
            "Cost per day by tariff period",
            [tariff_query(TARIFF_PERIOD, "last", "today_cost", "$tag_period", BY_DAY_PERIOD)],
            unit=CURRENCY_UNIT,
            bars=True,
            stacked=True,
            description="Cost of each period's energy per local day, at the prices in force that day "
            "(subscription not included). No bar: no price for that energy.",
            **per_period,
        ),
        panel(
            "bargauge",
            "This month by tariff period",
            [tariff_query(TARIFF_PERIOD, "last", "month_cost", "$tag_period", BY_PERIOD_TAG)],
            unit=CURRENCY_UNIT,
            w=8,
            time_from="now/M",
            description="Cost of each period's energy since the first day of this month.",
            **per_period,
        ),
        panel(
            "bargauge",
            "Energy this month by tariff period",
            [tariff_query(TARIFF_PERIOD, "last", "month_wh", "$tag_period", BY_PERIOD_TAG)],
            unit="watth",
            w=8,
            time_from="now/M",
            description="Energy of each period since the first day of this month.",
            **per_period,
        ),
        panel(
            "bargauge",
            "Last month by tariff period",
            [tariff_query(TARIFF_PERIOD, "last", "month_cost", "$tag_period", BY_PERIOD_TAG)],
            unit=CURRENCY_UNIT,
            w=8,
            time_from="now/M",
            time_shift="1M/M",
            description="Cost of each period's energy during the whole previous month (its last record).",
            **per_period,
        ),
        panel(
            "timeseries",
            "Cost per day, subscription included",
            [tariff_query(TARIFF, "last", "today_total", "total", "GROUP BY time(1d) fill(null) tz('${tz}')")],
            unit=CURRENCY_UNIT,
            bars=True,
            description="What each local day cost: energy at that day's prices plus its share of the monthly "
            "subscription.",
        ),
        panel(
            "timeseries",
            "Price per kWh",
            [tariff_query(TARIFF, "last", "price", "price", BY_GROUPING)],
            unit=CURRENCY_UNIT,
            decimals=4,
            description="Price per kWh of the period in force over time: the period switches (HC/HP, Tempo "
            "colours) and price changes at a date.",
        ),
    ]


def energy() -> dict[str, Any]:
    """Meter data: power, current, voltage, energy by tariff index, maxima, Tempo, costs, production."""
    all_indexes = [*HIST_INDEXES, *STD_SUPPLIER]
    tempo_today = [
        field_query("last", "ptec", "PTEC", where='"ptec" =~ /^H[CP]J[BWR]$/', group=""),
        field_query("last", "stge", "STGE", where='"stge" =~ /^.[1-9A-Fa-f]/', group=""),
    ]
    tempo_tomorrow = [
        field_query("last", "demain", "DEMAIN", group=""),
        field_query("last", "stge", "STGE", where='"stge" =~ /^.[1-9A-Fa-f]/', group=""),
    ]
    panels = [
        row("Now"),
        panel(
            "stat",
            "Apparent power",
            [field_query("last", "papp", "PAPP", group=""), field_query("last", "sinsts", "SINSTS", group="")],
            unit="voltamp",
            w=4,
            h=5,
            description="Last apparent power drawn: PAPP (historique) or SINSTS (standard).",
        ),
        panel(
            "stat",
            "Tariff period",
            [field_query("last", "ptec", "PTEC", group=""), field_query("last", "ltarf", "LTARF", group="")],
            unit="none",
            w=4,
            h=5,
            description="PTEC (historique) or LTARF, the supplier's label (standard).",
        ),
        panel(
            "stat",
            "Tempo today",
            tempo_today,
            options={"textMode": "value"},
            unit="none",
            w=4,
            h=5,
            mappings=regex_mappings(TEMPO_TODAY),
            description="Colour of the current Tempo day (06:00 to 06:00): PTEC (historique) or STGE bits 24-25 "
            "(standard). No data for other contracts.",
        ),
        panel(
            "stat",
            "Tempo tomorrow",
            tempo_tomorrow,
            options={"textMode": "value"},
            unit="none",
            w=4,
            h=5,
            mappings=regex_mappings(TEMPO_TOMORROW),
            description="Colour of the next Tempo day, once announced: DEMAIN (historique) or STGE bits 26-27 "
            "(standard). No data for other contracts.",
        ),
        panel(
            "stat",
            "Subscribed",
            [field_query("last", "isousc", "ISOUSC", group=""), field_query("last", "pref", "PREF", group="")],
            w=4,
            h=5,
            overrides=unit_overrides({"ISOUSC": "amp", "PREF": "kvoltamp"}),
            description="Subscribed current ISOUSC (historique, per phase on three-phase meters) or reference "
            "power PREF (standard).",
        ),
        panel(
            "stat",
            "Injected power",
            [field_query("last", "sinsti", "SINSTI", group="")],
            unit="voltamp",
            w=4,
            h=5,
            description="Apparent power injected (SINSTI): producers in standard mode only.",
        ),
        row("Power, current, voltage"),
        panel(
            "timeseries",
            "Apparent power",
            [
                field_query("mean", "papp", "PAPP"),
                field_query("mean", "sinsts", "SINSTS"),
                *(field_query("mean", f"sinsts{i}", f"SINSTS{i}") for i in (1, 2, 3)),
            ],
            unit="voltamp",
            description="Mean apparent power drawn per ${grouping}: PAPP (historique, total), SINSTS (standard, "
            "total) and SINSTS1-3 (standard three-phase, per phase). Gaps are missing data.",
        ),
        panel(
            "timeseries",
            "Current per phase",
            [
                field_query("mean", "iinst", "IINST"),
                *(field_query("mean", f"iinst{i}", f"IINST{i}") for i in (1, 2, 3)),
                *(field_query("mean", f"irms{i}", f"IRMS{i}") for i in (1, 2, 3)),
            ],
            unit="amp",
            description="Mean current per ${grouping}: IINST/IINST1-3 (historique) or IRMS1-3 (standard).",
        ),
        panel(
            "timeseries",
            "Voltage per phase",
            [
                *(field_query("mean", f"urms{i}", f"URMS{i}") for i in (1, 2, 3)),
                *(field_query("last", f"umoy{i}", f"UMOY{i} (10-minute mean)") for i in (1, 2, 3)),
            ],
            unit="volt",
            description="RMS voltage per phase (URMS1-3) and the meter's 10-minute means (UMOY1-3): standard "
            "mode only, historique frames carry no voltage.",
        ),
        panel(
            "state-timeline",
            "Tariff period",
            [field_query("last", "ptec", "PTEC"), field_query("last", "ltarf", "LTARF")],
            unit="none",
            description="PTEC (historique) or LTARF (standard) over time.",
        ),
        row("Energy"),
        panel(
            "timeseries",
            "Energy per ${period} by tariff index",
            [index_query(f, a) for f, a in all_indexes],
            unit="watth",
            w=24,
            h=10,
            bars=True,
            stacked=True,
            overrides=colour_overrides(TEMPO_COLOURS),
            description="Energy counted by each index of the meter per ${period}, in the ${tz} time zone "
            "(weeks start on Monday). Historique: BASE, HCHC/HCHP, EJPHN/EJPHPM, Tempo BBRHxxx. Standard: the "
            "supplier indexes EASF01-10, whose meaning is the supplier's calendar (NGTF): HC/HP = 01 HC, 02 HP; "
            "Tempo = 01/02 HC/HP bleu, 03/04 blanc, 05/06 rouge; EJP = 01 normal, 02 pointe mobile. "
            "An empty period is missing data.",
        ),
        panel(
            "bargauge",
            "This month by tariff index",
            [index_query(f, a, group="") for f, a in all_indexes],
            unit="watth",
            w=8,
            time_from="now/M",
            overrides=colour_overrides(TEMPO_COLOURS),
            description="Energy counted by each index since the first day of this month (browser time zone).",
        ),
        panel(
            "bargauge",
            "Last month by tariff index",
            [index_query(f, a, group="") for f, a in all_indexes],
            unit="watth",
            w=8,
            time_from="now/M",
            time_shift="1M/M",
            overrides=colour_overrides(TEMPO_COLOURS),
            description="Energy counted by each index during the whole previous month.",
        ),
        panel(
            "bargauge",
            "Distributor indexes, this month",
            [index_query(f, a, group="") for f, a in STD_DISTRIBUTOR],
            unit="watth",
            w=8,
            time_from="now/M",
            description="Standard mode: the distributor's indexes EASD01-04 (the network operator's calendar, "
            "which can differ from the supplier's).",
        ),
        panel(
            "timeseries",
            "Distributor indexes per ${period}",
            [index_query(f, a) for f, a in STD_DISTRIBUTOR],
            unit="watth",
            bars=True,
            stacked=True,
            description="Standard mode: energy counted by EASD01-04 per ${period}.",
        ),
        panel(
            "timeseries",
            "Maximum power vs subscribed power",
            [
                field_query("max", "smaxsn", "SMAXSN (meter's daily maximum)", group=BY_PERIOD),
                field_query("max", "sinsts", "max SINSTS", group=BY_PERIOD),
                field_query("max", "papp", "max PAPP", group=BY_PERIOD),
                target(
                    f'SELECT last("pref") * 1000 AS "PREF" FROM "{MEASUREMENT}" WHERE {METER} AND $timeFilter '
                    + BY_PERIOD,
                    "PREF",
                ),
                target(
                    f'SELECT last("isousc") * 200 AS "ISOUSC x 200 V" FROM "{MEASUREMENT}" WHERE {METER} '
                    f'AND "iinst" >= 0 AND $timeFilter {BY_PERIOD}',
                    "ISOUSC x 200 V",
                ),
                target(
                    f'SELECT last("isousc") * 600 AS "ISOUSC x 3 x 200 V" FROM "{MEASUREMENT}" WHERE {METER} '
                    f'AND "iinst1" >= 0 AND $timeFilter {BY_PERIOD}',
                    "ISOUSC x 3 x 200 V",
                ),
            ],
            unit="voltamp",
            points="always",
            overrides=colour_overrides({"PREF": "red", "ISOUSC x 200 V": "red", "ISOUSC x 3 x 200 V": "red"}),
            description="Highest apparent power per ${period} against the subscribed power: PREF in kVA "
            "(standard), or ISOUSC x 200 V per phase (historique: ISOUSC is the per-phase setting current). "
            "SMAXSN is the maximum the meter itself measured; the others are the highest value written.",
        ),
        *cost_panels(),
        row("Production"),
        panel(
            "timeseries",
            "Injected power",
            [field_query("mean", "sinsti", "SINSTI"), field_query("max", "smaxin", "SMAXIN (daily maximum)")],
            unit="voltamp",
            description="Producers (standard mode): mean apparent power injected per ${grouping}.",
        ),
        panel(
            "timeseries",
            "Injected energy per ${period}",
            [index_query("eait", "EAIT")],
            unit="watth",
            bars=True,
            description="Producers (standard mode): energy injected into the network (EAIT) per ${period}.",
        ),
    ]
    meter_var = {
        "name": "meter",
        "label": "Meter",
        "type": "query",
        "datasource": DS,
        "query": f'SHOW TAG VALUES FROM "{MEASUREMENT}" WITH KEY = "meter"',
        "definition": f'SHOW TAG VALUES FROM "{MEASUREMENT}" WITH KEY = "meter"',
        "refresh": 1,
        "sort": 1,
        "multi": False,
        "includeAll": False,
        "current": {},
        "options": [],
        "hide": 0,
        "regex": "",
    }
    variables = [
        datasource_variable(),
        meter_var,
        interval_variable("grouping", "Grouping", "1m,5m,10m,30m,1h,6h,12h,1d"),
        custom_variable("period", "Energy per", [("day", "1d"), ("week", "1w")]),
        {
            "name": "tz",
            "label": "Time zone",
            "type": "textbox",
            "query": "Europe/Paris",
            "current": {"text": "Europe/Paris", "value": "Europe/Paris"},
            "options": [{"text": "Europe/Paris", "value": "Europe/Paris", "selected": True}],
            "hide": 0,
        },
    ]
    return dashboard(
        "teleinfo-energy",
        "Linky energy",
        "Power, energy per tariff index, Tempo, costs, production: what the teleinfo appliance writes to InfluxDB.",
        variables,
        panels,
        "now-7d",
        "1m",
    )


# --- the network dashboard ------------------------------------------------------------------------------------------


def network() -> dict[str, Any]:
    """Self-check results (public IP, open ports, peers) and the appliance's own health counters."""
    by_grouping = "GROUP BY time($grouping), {} fill(null)"
    panels = [
        row("Self-checks"),
        panel(
            "state-timeline",
            "Check status",
            [
                target(
                    'SELECT last("code") FROM "teleinfo_check" WHERE $timeFilter '
                    + by_grouping.format('"check", "target"'),
                    "$tag_check $tag_target",
                )
            ],
            w=24,
            mappings=value_mappings(CHECK_CODES),
            span_nulls=CHECK_SPAN_MS,
            description="Every check and target: ok, problem (the check ran and found something wrong) or error "
            "(it could not run). Empty where no check ran.",
        ),
        panel(
            "table",
            "Problems and errors",
            [
                target(
                    'SELECT "check", "target", "status", "message" FROM "teleinfo_check" '
                    'WHERE "code" > 0 AND $timeFilter ORDER BY time DESC LIMIT 200',
                    fmt="table",
                )
            ],
            w=24,
            description="The latest results that were not ok, newest first.",
        ),
        row("Public IP"),
        panel(
            "stat",
            "Public address",
            [target('SELECT last("address") AS "address" FROM "teleinfo_public_ip" WHERE $timeFilter', "address")],
            unit="none",
            w=6,
            h=6,
        ),
        panel(
            "stat",
            "Changes of address",
            [
                target(
                    'SELECT count("address") AS "changes" FROM "teleinfo_public_ip" '
                    'WHERE "changed" = true AND $timeFilter',
                    "changes",
                )
            ],
            w=6,
            h=6,
            description="How many times the public address changed in the time range (no data: none).",
        ),
        panel(
            "table",
            "Address changes",
            [
                target(
                    'SELECT "previous", "address", "provider" FROM "teleinfo_public_ip" '
                    'WHERE "changed" = true AND $timeFilter ORDER BY time DESC',
                    fmt="table",
                )
            ],
            w=12,
            h=6,
        ),
        panel(
            "state-timeline",
            "Public address history",
            [
                target(
                    'SELECT last("address") AS "address" FROM "teleinfo_public_ip" WHERE $timeFilter '
                    "GROUP BY time($grouping) fill(null)",
                    "address",
                )
            ],
            w=24,
            h=5,
            span_nulls=CHECK_SPAN_MS,
        ),
        row("Open ports"),
        panel(
            "timeseries",
            "Open ports per target",
            [
                target(
                    'SELECT last("open") AS "open", last("unexpected") AS "unexpected", last("missing") AS "missing" '
                    'FROM "teleinfo_ports" WHERE $timeFilter ' + by_grouping.format('"target"'),
                    "$tag_target $col",
                )
            ],
            points="always",
            span_nulls=CHECK_SPAN_MS,
            decimals=0,
            description="Open TCP ports found by nmap, those not expected, and expected ones found closed.",
        ),
        panel(
            "table",
            "Latest scan per target",
            [
                target(
                    'SELECT last("ports") AS "open", last("unexpected_ports") AS "unexpected", '
                    'last("missing_ports") AS "missing" FROM "teleinfo_ports" WHERE $timeFilter GROUP BY "target"',
                    fmt="table",
                )
            ],
        ),
        row("Peers"),
        panel(
            "timeseries",
            "Ports seen from one side only",
            [
                target(
                    'SELECT last("only_local") AS "only from here", last("only_peer") AS "only from the peer" '
                    'FROM "teleinfo_peer_ports" WHERE $timeFilter ' + by_grouping.format('"peer", "target"'),
                    "$tag_peer $tag_target $col",
                )
            ],
            points="always",
            span_nulls=CHECK_SPAN_MS,
            decimals=0,
            description="Discrepancies between what the appliance and each SSH peer see open on a target "
            "(a firewall that filters one vantage point only).",
        ),
        panel(
            "table",
            "Latest peer view per target",
            [
                target(
                    'SELECT last("ports") AS "open from the peer", last("only_local_ports") AS "only from here", '
                    'last("only_peer_ports") AS "only from the peer" FROM "teleinfo_peer_ports" '
                    'WHERE $timeFilter GROUP BY "peer", "target"',
                    fmt="table",
                )
            ],
        ),
        row("Appliance health"),
        panel(
            "timeseries",
            "Frames per minute",
            [
                target(
                    'SELECT non_negative_derivative(last("frames"), 1m) AS "frames" FROM "teleinfo_health" '
                    "WHERE $timeFilter " + by_grouping.format('"host"'),
                    "$tag_host $col",
                )
            ],
            w=8,
            description="Frames decoded per minute (a historique meter sends about 30, a standard one 65).",
        ),
        panel(
            "timeseries",
            "Rejects by reason",
            [
                target(
                    'SELECT non_negative_difference(last("count")) AS "rejects" FROM "teleinfo_health_rejects" '
                    "WHERE $timeFilter " + by_grouping.format('"host", "reason"'),
                    "$tag_host $tag_reason",
                )
            ],
            w=8,
            bars=True,
            stacked=True,
            description="Groups and frames rejected per ${grouping}, by reason (checksum, format, interrupted...).",
        ),
        panel(
            "stat",
            "Uptime",
            [
                target(
                    'SELECT last("uptime_s") AS "uptime" FROM "teleinfo_health" WHERE $timeFilter GROUP BY "host"',
                    "$tag_host",
                )
            ],
            unit="s",
            w=8,
        ),
        panel(
            "timeseries",
            "Output failures",
            [
                target(
                    'SELECT non_negative_difference(last("failed")) AS "failed", '
                    'non_negative_difference(last("dropped")) AS "dropped" FROM "teleinfo_health_output" '
                    "WHERE $timeFilter " + by_grouping.format('"host", "output"'),
                    "$tag_host $tag_output $col",
                )
            ],
            bars=True,
            description="Per ${grouping}: failed delivery attempts and frames the server refused (failed), "
            "frames dropped because the queue was full (dropped).",
        ),
        panel(
            "timeseries",
            "Queue and spool depth",
            [
                target(
                    'SELECT last("queued") AS "queued", last("spooled") AS "spooled" FROM "teleinfo_health_output" '
                    "WHERE $timeFilter " + by_grouping.format('"host", "output"'),
                    "$tag_host $tag_output $col",
                )
            ],
            decimals=0,
            description="Frames waiting in memory (queued) and on disk (spooled) per output: a growing spool "
            "means the server has been unreachable.",
        ),
    ]
    variables = [datasource_variable(), interval_variable("grouping", "Grouping", "1m,5m,15m,1h,6h,1d")]
    return dashboard(
        "teleinfo-network",
        "Teleinfo appliance: network and health",
        "Network self-checks (public IP, open ports, SSH peers) and the appliance's own counters.",
        variables,
        panels,
        "now-7d",
        "5m",
    )


DASHBOARDS = {"teleinfo-energy.json": energy, "teleinfo-network.json": network}


def render(name: str) -> str:
    """The JSON text of dashboard ``name`` (a key of :data:`DASHBOARDS`), as committed."""
    return json.dumps(DASHBOARDS[name](), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed dashboard differs")
    args = parser.parse_args(argv)
    stale = []
    for name in DASHBOARDS:
        path = DASHBOARD_DIR / name
        text = render(name)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run grafana/generate.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
