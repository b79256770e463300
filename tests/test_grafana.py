"""The Grafana dashboards (``grafana/``) against what the appliance really writes.

* The committed JSON is exactly what ``grafana/generate.py`` produces; the provisioning files are valid.
* Structure: unique panel ids, panels on the 24-column grid, Grafana units that exist, the data source always
  the ``${datasource}`` variable, every variable a query uses defined, every measurement, field and tag a query
  names documented in docs/DATA_FORMAT.md.
* A real influxd 1.6.7 is loaded, through ``/write?precision=s``, with a simulated week of every contract (BASE,
  HC/HP, Tempo, EJP) in historique and standard mode, single- and three-phase, and a producer: the line protocol
  of :func:`appliance.outputs.influxdb.output.frame_lines` for frames decoded from the simulator's bytes, one frame
  every 15 minutes, with a six-hour outage; plus self-check results (a real nmap scan of ports this test opens on
  127.0.0.1, public IP results with an address change, a peer comparison and an unreachable peer) through
  :func:`appliance.checks.results.to_lines`, and health counters through :func:`appliance.metrics.snapshot_lines`.
  Every panel's query, Grafana's macros substituted, runs against it for every meter: a query returns a series
  exactly when the meter sends the fields it selects (and its filters hold somewhere in the week), and never an
  empty answer for all meters.  Values are checked where a mistake would go unnoticed: daily energy in the
  dashboard's time zone, Monday weeks, gaps left as nulls, the Tempo colours decoded from PTEC, DEMAIN and STGE.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import socket
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from appliance.checks.peers.check import _compare
from appliance.checks.peers.config import PeerConfig
from appliance.checks.ports.check import ScanReport, check_target
from appliance.checks.ports.config import PortsCheckConfig, PortsTargetConfig
from appliance.checks.public_ip.check import PublicIpChecker
from appliance.checks.public_ip.config import PublicIpCheckConfig
from appliance.checks.results import ERROR, CheckResult, to_lines
from appliance.lineproto import field_key, parse_line
from appliance.metrics import snapshot_lines
from appliance.outputs.influxdb.config import InfluxConfig
from appliance.outputs.influxdb.output import frame_lines
from appliance.records import Record, TariffRecord
from appliance.schema import Config
from appliance.service import Service
from appliance.simulator import PARIS, MeterSimulator
from appliance.stats import Stats
from appliance.tariff import TariffEngine, TariffPublisher, parse_tariff
from appliance.tariff.lines import tariff_lines
from appliance.tic import Decoder

from .servers import InfluxD, VictoriaMetrics
from .test_tariff import PRICES
from .util import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DB = "teleinfo"
WEEK = datetime(2024, 1, 15, tzinfo=PARIS)  # a Monday; with seed 4: white and red Tempo days, an EJP day
STEP = 900  # one frame every 15 minutes
FRAMES = 7 * 86400 // STEP
GAP = (WEEK + timedelta(days=2, hours=12), WEEK + timedelta(days=2, hours=18))  # nothing written: an outage
SEED = 4
START, END = int(WEEK.timestamp()), int((WEEK + timedelta(days=7)).timestamp()) - 1
# A Grafana interval variable may only take these; units Grafana knows (valueFormats categories).
UNITS = {"short", "none", "voltamp", "kvoltamp", "watth", "kwatth", "watt", "amp", "volt", "s", "currencyEUR"}
GRAFANA_BUILTINS = {"timeFilter", "__interval", "interval", "__timeFilter", "col", "tag_"}


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("teleinfo_grafana_generate", GRAFANA / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()


def dashboards() -> dict[str, dict[str, Any]]:
    return {name: json.loads((GRAFANA / "dashboards" / name).read_text()) for name in GEN.DASHBOARDS}


def panels_of(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def targets_of(dash: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for p in panels_of(dash):
        for t in p.get("targets", []):
            yield p, t


# --- the contract: docs/DATA_FORMAT.md -----------------------------------------------------------------------


def documented_schema() -> dict[str, set[str]]:
    """Measurement -> documented field and tag keys: section 2.1 for ``teleinfo``, then every
    ``### n.n `measurement``` table of sections 5 and 6."""
    text = (ROOT / "docs" / "DATA_FORMAT.md").read_text()
    schema: dict[str, set[str]] = {"teleinfo": {"meter", "mode"}}
    section = text.split("### 2.1 Fields", 1)[1].split("###", 1)[0]
    schema["teleinfo"] |= {m.group(1) for m in re.finditer(r"^\| \w+ \| `[^`]+` \| `(\w+)` \|", section, re.M)}
    for m in re.finditer(r"^### \d+\.\d+ `(\w+)`.*?\n(.*?)(?=^#|\Z)", text, re.M | re.S):
        keys = re.findall(r"^\| (?:tag|field) \| `(\w+)` \|", m.group(2), re.M)
        schema[m.group(1)] = set(keys)
    return schema


def named_keys(query: str) -> tuple[str, set[str]]:
    """The measurement a query reads and the field/tag keys it names (aliases after AS excluded)."""
    measurement = re.search(r'FROM "(\w+)"', query)
    assert measurement is not None, query
    without_aliases = re.sub(r'AS "[^"]*"', "", query)
    keys = set(re.findall(r'"(\w+)"', without_aliases)) - {measurement.group(1)}
    return measurement.group(1), keys


# --- structure (no server) ---------------------------------------------------------------------------------------


def test_committed_dashboards_are_the_generator_output() -> None:
    for name in GEN.DASHBOARDS:
        assert (GRAFANA / "dashboards" / name).read_text() == GEN.render(name), f"run grafana/generate.py ({name})"
    assert GEN.main(["--check"]) == 0


def test_provisioning_files() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "teleinfo.yaml").read_text())
    [source] = ds["datasources"]
    assert source["type"] == "influxdb" and source["jsonData"]["version"] == "InfluxQL"
    assert source["jsonData"]["dbName"] == DB
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "teleinfo.yaml").read_text())
    [provider] = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert ds["apiVersion"] == prov["apiVersion"] == 1


def test_structure() -> None:
    schema = documented_schema()
    assert {"teleinfo_check", "teleinfo_ports", "teleinfo_health_output"} <= set(schema)
    assert set(dashboards()) == {"teleinfo-energy.json", "teleinfo-network.json"}
    for name, dash in dashboards().items():
        panels = panels_of(dash)
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        names = {v["name"] for v in dash["templating"]["list"]}
        assert "datasource" in names
        assert dash["templating"]["list"][0]["type"] == "datasource"
        for p in panels:
            pos = p["gridPos"]
            assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, p["title"]
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "influxdb", "uid": "${datasource}"}, p["title"]
            assert p["fieldConfig"]["defaults"]["unit"] in UNITS, p["title"]
            for o in p["fieldConfig"]["overrides"]:
                for prop in o["properties"]:
                    assert prop["id"] != "unit" or prop["value"] in UNITS, p["title"]
            custom = p["fieldConfig"]["defaults"].get("custom", {})
            if "spanNulls" in custom:  # meter data: never connected; check results: until the next run at most
                limit = False if name == "teleinfo-energy.json" else GEN.CHECK_SPAN_MS
                assert custom["spanNulls"] in (False, limit), f"{p['title']}: gaps must stay visible"
            refs = [t["refId"] for t in p["targets"]]
            assert p["targets"] and len(refs) == len(set(refs)), p["title"]
        for p, t in targets_of(dash):
            q = t["query"]
            assert t["datasource"]["uid"] == "${datasource}" and t["rawQuery"], p["title"]
            assert "SELECT" in q and "$timeFilter" in q, f"{p['title']}: {q}"
            if "GROUP BY time(" in q:
                assert "fill(null)" in q, f"{p['title']}: gaps must stay nulls: {q}"
            for var in re.findall(r"\$\{?(\w+)", q):
                assert var in names or var in GRAFANA_BUILTINS, f"{p['title']}: undefined ${var}"
            measurement, keys = named_keys(q)
            assert measurement in schema, f"{p['title']}: {measurement} is not in docs/DATA_FORMAT.md"
            missing = keys - schema[measurement]
            assert not missing, f"{p['title']}: {sorted(missing)} not documented for {measurement}"


def test_energy_dashboard_covers_the_contract() -> None:
    """Every energy index, power, current, voltage and Tempo field of section 2.1 that the issue asks for is read
    by some panel of the energy dashboard."""
    wanted = {"papp", "sinsts", "sinsti", "iinst", "isousc", "pref", "ptec", "ltarf", "demain", "stge", "smaxsn"}
    wanted |= {f for f, _ in (*GEN.HIST_INDEXES, *GEN.STD_SUPPLIER, *GEN.STD_DISTRIBUTOR)} | {"eait"}
    wanted |= {f"{name}{i}" for name in ("sinsts", "iinst", "irms", "urms") for i in (1, 2, 3)}
    assert len(wanted) == 49
    read = set().union(*(named_keys(t["query"])[1] for _, t in targets_of(dashboards()["teleinfo-energy.json"])))
    assert wanted <= read, sorted(wanted - read)


def test_tempo_mappings_cover_every_code() -> None:
    """Every STGE colour nibble maps to one text in each panel, PTEC and DEMAIN values too."""
    for nibble in "0123456789ABCDEF":
        stge = f"0{nibble}3A0001"
        today = grafana_map(GEN.regex_mappings(GEN.TEMPO_TODAY), stge)
        tomorrow = grafana_map(GEN.regex_mappings(GEN.TEMPO_TOMORROW), stge)
        n = int(nibble, 16)
        assert today == (None, "BLEU", "BLANC", "ROUGE")[n & 3]
        assert tomorrow == ("not announced yet", "BLEU", "BLANC", "ROUGE")[n >> 2]
    for ptec, colour in (("HCJB", "BLEU"), ("HPJW", "BLANC"), ("HPJR", "ROUGE"), ("HC..", None)):
        assert grafana_map(GEN.regex_mappings(GEN.TEMPO_TODAY), ptec) == colour
    assert grafana_map(GEN.regex_mappings(GEN.TEMPO_TOMORROW), "BLAN") == "BLANC"


def grafana_map(mappings: list[dict[str, Any]], value: str) -> str | None:
    """What Grafana shows for a string value: the first regex mapping that matches replaces the match with its
    text (String.replace semantics: the patterns match the whole value, so the text is all that remains)."""
    for m in mappings:
        opts = m["options"]
        if m["type"] == "regex" and re.search(opts["pattern"], value):
            return re.sub(opts["pattern"], opts["result"]["text"], value, count=1)
    return None


# --- the simulated week in a real influxd ------------------------------------------------------------------------

METERS: dict[str, dict[str, Any]] = {
    f"{mode} {contract}{' three-phase' if phases == 3 else ''}": {"mode": mode, "contract": contract, "phases": phases}
    for mode in ("historique", "standard")
    for phases in (1, 3)
    for contract in ("BASE", "HCHP", "TEMPO", "EJP")
}
METERS["standard BASE producer"] = {"mode": "standard", "contract": "BASE", "producer": True}


@dataclass
class Week:
    """What was written, kept on the Python side to know what each query must return."""

    influx: InfluxD
    ids: dict[str, str] = field(default_factory=dict)  # meter name -> ADCO/ADSC
    points: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)  # id -> [(time, fields)]
    # The tariff engine's points: measurement -> id -> [(time, fields)]; and each meter's engine, to compare.
    tariff: dict[str, dict[str, list[tuple[int, dict[str, Any]]]]] = field(default_factory=dict)
    engines: dict[str, TariffEngine] = field(default_factory=dict)

    def points_of(self, measurement: str, meter: str) -> list[tuple[int, dict[str, Any]]]:
        if measurement == "teleinfo":
            return self.points[meter]
        return self.tariff.get(measurement, {}).get(meter, [])

    def query(self, q: str) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({"db": DB, "q": q, "epoch": "s"})
        url = f"http://127.0.0.1:{self.influx.http_port}/query?{params}"
        with urllib.request.urlopen(url, timeout=10) as r:
            answer = json.load(r)
        [result] = answer["results"]
        assert "error" not in result, f"{q}: {result['error']}"
        return list(result.get("series", []))


def _write(port: int, lines: list[str]) -> None:
    for i in range(0, len(lines), 5000):
        body = "\n".join(lines[i : i + 5000]).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/write?db={DB}&precision=s", data=body)
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 (http://127.0.0.1 only)
            assert r.status == 204


def _meter_lines(week: Week) -> list[str]:
    """Each meter's frames (the InfluxDB output's lines) and the tariff engine's records for them (the lines of
    docs/DATA_FORMAT.md section 7, through the same encoder as the output), with the prices of every period."""
    lines: list[str] = []
    for i, (name, kw) in enumerate(METERS.items()):
        meter_id = f"0219{i:08d}"
        sim = MeterSimulator(start=WEEK, seed=SEED, meter_id=meter_id, **kw)
        decoder = Decoder(kw["mode"])
        points = week.points.setdefault(meter_id, [])
        week.ids[name] = meter_id
        records: list[Record] = []
        engine = week.engines[name] = TariffEngine(parse_tariff({"prices": [PRICES]}))
        publisher = TariffPublisher(engine, records.append)
        for _, sim_frame in zip(range(FRAMES), sim.frames(step=STEP), strict=False):
            if GAP[0] <= sim_frame.at < GAP[1]:
                continue
            for decoded in decoder.feed(sim_frame.data):
                frame = decoded.received(sim_frame.at.timestamp())
                frame_text = frame_lines(frame)
                lines.extend(frame_text)
                ts = int(frame_text[0].rsplit(" ", 1)[1])
                values = {field_key(k): v for k, v in frame.values.items() if k not in ("ADCO", "ADSC", "PRM")}
                points.append((ts, values))
                publisher.on_frame(frame)
        for record in records:
            assert isinstance(record, TariffRecord)
            for line in tariff_lines(record):
                lines.append(line)
                point = parse_line(line)
                assert point.time is not None
                fields = {**point.fields, **point.tags}
                week.tariff.setdefault(point.measurement, {}).setdefault(meter_id, []).append((point.time, fields))
    return lines


def _check_lines(tmp_path: Path) -> list[str]:
    """Self-check results made by the checks' own code: a real nmap scan of ports opened here, the public-IP
    result with an address change, a peer comparison and an unreachable peer."""
    nmap = shutil.which("nmap")
    if nmap is None:
        pytest.skip("nmap not installed (apt-get install -y nmap)")
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        socks.append(s)
    expected_port, unexpected_port = (s.getsockname()[1] for s in socks)
    closed_port = free_port()
    target = PortsTargetConfig(
        host="127.0.0.1", ports=f"{expected_port},{unexpected_port},{closed_port}", expected=[expected_port]
    )
    cfg = PortsCheckConfig(nmap=nmap, timeout=30, targets=[target])
    peer = PeerConfig(name="office", host="192.0.2.20")
    checker = PublicIpChecker(PublicIpCheckConfig(), tmp_path / "public_ip")
    results: list[CheckResult] = []
    try:
        for day in range(7):
            at = (WEEK + timedelta(days=day, hours=9)).timestamp()
            if day == 4:
                socks.pop().close()  # the unexpected port closes: the ports check is ok again
            scan = check_target(cfg, target, time.monotonic() + 60)
            assert scan.measurement == "ports", scan.message
            # The peer sees only the expected port (a firewall filters the other one from its side).  Its scan is
            # given here: SSH peers are exercised for real in test_checks_peers.py; this test needs their points.
            local = ScanReport("127.0.0.1", frozenset(scan.details["open"]), {}, 0.1)
            remote = ScanReport("127.0.0.1", frozenset({expected_port}), {}, 0.2)
            compared = _compare(peer, "127.0.0.1", local, remote, 0.5)
            address = "192.0.2.7" if day < 3 else "198.51.100.23"
            public = checker._found(address, "https://ip.example.net", [], 0.05)
            unreachable = CheckResult("peers", "office", ERROR, "office: connection refused", duration_s=0.1)
            for r in (scan, compared, public, unreachable):
                r.at = at
                results.append(r)
    finally:
        for s in socks:
            s.close()
    assert any(r.fields.get("changed") for r in results), "the week must hold an address change"
    return to_lines(results)


def _health_lines() -> list[str]:
    """The service's counters every 10 minutes, with rejects and an influxdb outage during the gap."""
    stats = Stats()
    stats.output("influxdb")
    stats.output("multicast")
    lines = []
    for k in range(7 * 144):
        at = WEEK + timedelta(minutes=10 * k)
        outage = GAP[0] <= at < GAP[1]
        for _ in range(20):
            stats.frame(40)
        if k % 7 == 0:
            stats.rejected(Counter({"checksum": 2, "interrupted": 1}))
        stats.update_output("multicast", sent=20)
        if outage:
            stats.update_output("influxdb", failed=1, spooled=(k % 36 + 1) * 20, state="failing")
        else:
            stats.update_output("influxdb", sent=20, spooled=0, queued=k % 3, state="up")
        lines += snapshot_lines(stats.snapshot(), int(at.timestamp()), "teleinfo-pi")
    return lines


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Week]:
    tmp = tmp_path_factory.mktemp("grafana")
    influx = InfluxD()
    influx.start(tmp)
    try:
        influx.execute(f'CREATE DATABASE "{DB}"')
        w = Week(influx)
        lines = _meter_lines(w) + _check_lines(tmp) + _health_lines()
        _write(influx.http_port, lines)
        yield w
    finally:
        influx.stop()


# --- running the panels' queries ---------------------------------------------------------------------------------


def substitute(query: str, meter: str = "", grouping: str = "1h", period: str = "1d") -> str:
    """Grafana's macros and this dashboard's variables, as Grafana interpolates them for InfluxQL."""
    values = {
        "timeFilter": f"time >= {START}s and time <= {END}s",
        "meter": re.escape(meter),
        "grouping": grouping,
        "period": period,
        "tz": "Europe/Paris",
        "__interval": grouping,
        "interval": grouping,
    }
    out = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], query)
    assert not re.search(r"\$[\w{]", out), out
    return out


def expected_nonempty(query: str, points: list[tuple[int, dict[str, Any]]]) -> bool:
    """Whether ``query`` must return a series for a meter that wrote ``points``: some point holds every selected
    field and satisfies the query's field conditions (``"f" > 0``, ``"f" >= 0``, ``"f" =~ /re/``)."""
    selected = re.findall(r'\w+\("(\w+)"\)', query.split(" FROM ")[0])
    where = query.split(" WHERE ", 1)[1]
    numeric = re.findall(r'"(\w+)" (>=?) (\d+)', where)
    regexes = [(f, rx) for f, rx in re.findall(r'"(\w+)" =~ /(.+?)/ AND', where) if f != "meter"]

    def holds(values: dict[str, Any]) -> bool:
        if any(f not in values for f in selected):
            return False
        for f, op, bound in numeric:
            v = values.get(f)
            if not isinstance(v, int) or not (v > int(bound) if op == ">" else v >= int(bound)):
                return False
        return all(isinstance(values.get(f), str) and re.search(rx, values[f]) for f, rx in regexes)

    return any(START <= ts <= END and holds(values) for ts, values in points)


def energy_targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return list(targets_of(dashboards()["teleinfo-energy.json"]))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("period", ["1d", "1w"])
def test_energy_panels_return_what_each_meter_sends(week: Week, period: str) -> None:
    seen: dict[str, set[str]] = {}
    for p, t in energy_targets():
        if period != "1d" and "$period" not in t["query"]:
            continue  # the weekly pass only re-runs the queries the period changes
        for name, meter in week.ids.items():
            q = substitute(t["query"], meter, period=period)
            series = week.query(q)
            measurement, _ = named_keys(t["query"])
            want = expected_nonempty(t["query"], week.points_of(measurement, meter))
            assert bool(series) == want, f"{p['title']} / {t['alias']} for {name}: {q}"
            column = re.search(r'AS "([^"]+)"', t["query"])
            for s in series:  # a per-tag series ($tag_period) keeps its column name; Grafana renames it
                assert s["columns"] == ["time", t["alias"] if "$" not in t["alias"] else column and column[1]], q
                assert any(v[1] is not None for v in s["values"]), q
            if series:
                seen.setdefault(p["title"], set()).add(name)
    panels = {p["title"] for p, t in energy_targets() if period == "1d" or "$period" in t["query"]}
    assert panels == set(seen), f"panels without data for any meter: {panels - set(seen)}"
    if period != "1d":
        return
    # Each contract shows up where it should.
    assert seen["Tempo today"] == seen["Tempo tomorrow"] == {n for n in METERS if "TEMPO" in n}
    assert seen["Injected power"] == {"standard BASE producer"}
    assert seen["Voltage per phase"] == {n for n in METERS if n.startswith("standard")}
    assert seen["Energy per ${period} by tariff index"] == set(METERS)


@pytest.mark.slow
@pytest.mark.integration
def test_meter_variable_lists_every_meter(week: Week) -> None:
    [var] = [v for v in dashboards()["teleinfo-energy.json"]["templating"]["list"] if v["name"] == "meter"]
    [series] = week.query(var["query"])
    assert {v[1] for v in series["values"]} == set(week.ids.values())


@pytest.mark.slow
@pytest.mark.integration
def test_daily_energy_in_local_days_and_monday_weeks(week: Week) -> None:
    """BASE index spread per Paris day equals the Python computation; weeks start on Monday 00:00 Paris."""
    meter = week.ids["historique BASE"]
    [t] = [t for p, t in energy_targets() if p["title"].startswith("Energy per") and t["alias"] == "BASE"]
    [series] = week.query(substitute(t["query"], meter, period="1d"))
    by_day: dict[datetime, list[int]] = {}
    for ts, values in week.points[meter]:
        by_day.setdefault(datetime.fromtimestamp(ts, PARIS).replace(hour=0, minute=0, second=0), []).append(
            values["base"]
        )
    want = {int(day.timestamp()): max(v) - min(v) for day, v in by_day.items()}
    assert {ts: v for ts, v in series["values"]} == want
    assert all(v > 0 for v in want.values())
    [weekly] = week.query(substitute(t["query"], meter, period="1w"))
    starts = [datetime.fromtimestamp(ts, PARIS) for ts, _ in weekly["values"]]
    assert starts[0] == WEEK and all(s.weekday() == 0 and s.hour == 0 for s in starts)


@pytest.mark.slow
@pytest.mark.integration
def test_gaps_stay_null(week: Week) -> None:
    """The six hours without data are null buckets in the power and current graphs, not interpolated values.

    Every grouped query of those two panels is checked on a meter that sends its field (PAPP and IINST come from a
    single-phase historique meter, IINST1-3 from a three-phase one, SINSTS* and IRMS* from a three-phase standard
    one), so a query that returned nothing for all of them would fail here rather than pass unchecked.
    """
    meters = [week.ids[n] for n in ("historique TEMPO", "historique TEMPO three-phase", "standard TEMPO three-phase")]
    grouped = [
        t
        for p, t in energy_targets()
        if p["title"] in ("Apparent power", "Current per phase") and "GROUP BY time($grouping)" in t["query"]
    ]
    assert len(grouped) >= 10  # PAPP, SINSTS, SINSTS1-3; IINST, IINST1-3, IRMS1-3
    for t in grouped:
        answers = [week.query(substitute(t["query"], meter, grouping="1h")) for meter in meters]
        with_data = [series for series in answers if series]
        assert with_data, f"{t['alias']}: no meter of the week sends it"
        for series in with_data:
            values = dict(series[0]["values"])
            in_gap = [v for ts, v in values.items() if GAP[0].timestamp() <= ts < GAP[1].timestamp()]
            assert len(in_gap) == 6 and all(v is None for v in in_gap), t["alias"]
            assert values[int(GAP[1].timestamp())] is not None


@pytest.mark.slow
@pytest.mark.integration
def test_tempo_colours_agree_between_modes(week: Week) -> None:
    """Same seed, same instants: the standard meter's STGE, read through the dashboards' mappings, gives the
    colours the historique meter's PTEC and DEMAIN give, every 15 minutes of the week."""
    today = GEN.regex_mappings(GEN.TEMPO_TODAY)
    tomorrow = GEN.regex_mappings(GEN.TEMPO_TOMORROW)

    def column(meter: str, name: str) -> dict[int, str]:
        [s] = week.query(f'SELECT "{name}" FROM "teleinfo" WHERE "meter" = \'{meter}\'')  # noqa: S608
        return dict(s["values"])

    hist, std = week.ids["historique TEMPO"], week.ids["standard TEMPO"]
    ptec, demain, stge = column(hist, "ptec"), column(hist, "demain"), column(std, "stge")
    assert set(ptec) == set(stge) and len(stge) > 600
    colours = set()
    for ts, code in stge.items():
        colours.add(grafana_map(today, code))
        assert grafana_map(today, code) == grafana_map(today, ptec[ts]), datetime.fromtimestamp(ts, PARIS)
        assert grafana_map(tomorrow, code) == grafana_map(tomorrow, demain[ts]), datetime.fromtimestamp(ts, PARIS)
    assert colours == {"BLEU", "BLANC", "ROUGE"}


@pytest.mark.slow
@pytest.mark.integration
def test_subscribed_power(week: Week) -> None:
    """PREF in VA for standard meters; ISOUSC x 200 V (x 3 on three-phase) for historique ones."""
    [panel] = [p for p in panels_of(dashboards()["teleinfo-energy.json"]) if p["title"].startswith("Maximum")]
    by_alias = {t["alias"]: t["query"] for t in panel["targets"]}
    for name, alias, va in (
        ("standard BASE", "PREF", 6000),
        ("standard TEMPO three-phase", "PREF", 12000),
        ("historique BASE", "ISOUSC x 200 V", 6000),
        ("historique HCHP three-phase", "ISOUSC x 3 x 200 V", 12000),
    ):
        [s] = week.query(substitute(by_alias[alias], week.ids[name], period="1w"))
        assert {v for _, v in s["values"] if v is not None} == {va}, name


@pytest.mark.slow
@pytest.mark.integration
def test_network_panels(week: Week) -> None:
    """Every network and health query returns data; the values show the week's events."""
    answers: dict[str, list[dict[str, Any]]] = {}
    for p, t in targets_of(dashboards()["teleinfo-network.json"]):
        q = substitute(t["query"], grouping="1h")
        series = week.query(q)
        assert series and any(v is not None for s in series for row in s["values"] for v in row[1:]), q
        answers[p["title"]] = series
    problems = answers["Problems and errors"][0]
    assert problems["columns"] == ["time", "check", "target", "status", "message"]
    assert {(r[1], r[3]) for r in problems["values"]} == {
        ("ports", "problem"),
        ("peers", "problem"),
        ("peers", "error"),
    }
    [changes] = answers["Address changes"]
    assert changes["values"][0][1:] == ["192.0.2.7", "198.51.100.23", "https://ip.example.net"]
    status = {tuple(sorted(s["tags"].items())): s for s in answers["Check status"]}
    assert set(status) == {
        (("check", "ports"), ("target", "127.0.0.1")),
        (("check", "peers"), ("target", "office")),
        (("check", "peers"), ("target", "office/127.0.0.1")),
        (("check", "public_ip"), ("target", "public")),
    }
    ports = {tuple(s["tags"].values()): s for s in answers["Latest scan per target"]}
    [latest] = ports[("127.0.0.1",)]["values"]
    assert latest[2:] == ["", ""]  # the unexpected port closed on day 4: nothing unexpected, nothing missing
    reasons = {s["tags"]["reason"] for s in answers["Rejects by reason"]}
    assert {"checksum", "interrupted", "format"} <= reasons
    spool = {s["tags"]["output"]: s for s in answers["Queue and spool depth"]}
    assert max(r[2] or 0 for r in spool["influxdb"]["values"]) > 0  # the outage filled the spool
    [frames] = answers["Frames per minute"]
    rates = [v for _, v in frames["values"] if v is not None]
    assert rates and all(abs(v - 2.0) < 1e-9 for v in rates)  # 20 frames every 10 minutes


@pytest.mark.slow
@pytest.mark.integration
def test_month_panels(week: Week) -> None:
    """The month panels have no GROUP BY time: one value per index over the whole range, and the whole week's
    energy of an index equals its last minus its first reading."""
    meter = week.ids["standard HCHP"]
    [panel] = [p for p in panels_of(dashboards()["teleinfo-energy.json"]) if p["title"] == "This month by tariff index"]
    assert panel["timeFrom"] == "now/M"
    got = {}
    for t in panel["targets"]:
        for s in week.query(substitute(t["query"], meter)):
            [[_, value]] = s["values"]
            got[t["alias"]] = value
    assert set(got) == {"EASF01", "EASF02"}
    for alias, value in got.items():
        series = [v[alias.lower()] for ts, v in week.points[meter] if START <= ts <= END]
        assert value == max(series) - min(series) > 0


@pytest.mark.integration
def test_service_writes_its_health_counters(tmp_path: Path) -> None:
    """With outputs.influxdb enabled the service writes teleinfo_health* every health_interval seconds (here to
    VictoriaMetrics: influxd 1.6.7 has no /api/v2/write), and stops doing so with its outputs."""
    vm = VictoriaMetrics()
    vm.start(tmp_path)
    try:
        base = Config()
        influx = InfluxConfig(enabled=True, url=vm.url, timeout=2.0, health_interval=0.2)
        multicast = replace(base.outputs.multicast, enabled=False)
        cfg = replace(
            base,
            outputs=replace(base.outputs, multicast=multicast, influxdb=influx),
            state=replace(base.state, directory=str(tmp_path / "state")),
        )
        service = Service(cfg)
        for _ in range(3):
            service.stats.frame(25, Counter({"checksum": 1}))
        service._start_outputs()
        try:
            wait_until(lambda: vm.export('{__name__="teleinfo_health_output_queued"}'), timeout=15)
        finally:
            service._stop_outputs(2.0)
        assert service.sampler is None
        samples = {
            (s["metric"]["__name__"], s["metric"].get("reason", s["metric"].get("output", ""))): s["values"][-1]
            for s in vm.export('{__name__=~"teleinfo_health.*"}')
        }
        hosts = {s["metric"]["host"] for s in vm.export('{__name__=~"teleinfo_health.*"}')}
    finally:
        vm.stop()
    assert hosts == {socket.gethostname()}
    assert samples[("teleinfo_health_frames", "")] == 3
    assert samples[("teleinfo_health_groups", "")] == 75
    assert samples[("teleinfo_health_rejects", "")] == samples[("teleinfo_health_rejects_count", "checksum")] == 3
    assert samples[("teleinfo_health_rejects_count", "format")] == 0
    assert ("teleinfo_health_output_spooled", "influxdb") in samples


@pytest.mark.integration
@pytest.mark.parametrize("name", ["historique TEMPO", "standard HCHP three-phase", "standard EJP"])
def test_cost_row_equals_the_engines_ledger(week: Week, name: str) -> None:
    """The cost row's daily energy and cost per period, read back from influxd, equal the tariff engine's own
    ledger for every local day of the week (the record published when a day ends makes the day's last point its
    whole total, outage included); the month bars equal the week's sum (the engine started on its Monday); the
    daily total adds each day's share of the monthly subscription."""
    meter, engine = week.ids[name], week.engines[name]
    panels = {p["title"]: p for p in panels_of(dashboards()["teleinfo-energy.json"])}

    def per_period(title: str) -> dict[tuple[str, int], float]:
        [t] = panels[title]["targets"]
        return {
            (s["tags"]["period"], ts): v
            for s in week.query(substitute(t["query"], meter))
            for ts, v in s["values"]
            if v is not None
        }

    energy, cost = per_period("Energy per day by tariff period"), per_period("Cost per day by tariff period")
    [total_q] = panels["Cost per day, subscription included"]["targets"]
    [totals] = week.query(substitute(total_q["query"], meter))
    total = dict(totals["values"])
    days = [(WEEK + timedelta(days=d)).date() for d in range(7)]
    month_wh: dict[str, int] = {}
    for day in days:
        midnight = int(datetime.combine(day, datetime.min.time(), tzinfo=PARIS).timestamp())
        ledger = engine.day_energy(day)
        assert ledger and "unattributed" not in ledger
        day_cost = 0.0
        for period, wh in ledger.items():
            assert energy[(period, midnight)] == wh, (day, period)
            assert cost[(period, midnight)] == pytest.approx(wh / 1000 * PRICES[period])
            day_cost += wh / 1000 * PRICES[period]
            month_wh[period] = month_wh.get(period, 0) + wh
        assert total[midnight] == pytest.approx(day_cost + PRICES["subscription_per_month"] / 31)
    [month_q] = panels["Energy this month by tariff period"]["targets"]
    got = {s["tags"]["period"]: s["values"][0][1] for s in week.query(substitute(month_q["query"], meter))}
    assert {p: v for p, v in got.items() if v} == month_wh
    [price_q] = panels["Price now (per kWh)"]["targets"]
    [[[_, price]]] = [s["values"] for s in week.query(substitute(price_q["query"], meter))]
    last_period = week.tariff["teleinfo_tariff"][meter][-1][1]["period"]
    assert price == PRICES[last_period]
