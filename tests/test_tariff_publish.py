"""The tariff record where people look: its type, when it is published, its line protocol, its Home Assistant
entities, and the real outputs delivering it to a real mosquitto, VictoriaMetrics and influxd.

Records come from the real engine fed with simulated frames decoded by the real decoder.  Home Assistant's rules
(tests/ha_rules.py, from HA's source: HA Core needs Python >= 3.13) judge the discovery and every state.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.ha import tariff_discovery_payload, tariff_discovery_topic, tariff_state_topic
from appliance.lineproto import parse_line
from appliance.outputs.base import OutputWorker
from appliance.outputs.influxdb.config import InfluxConfig
from appliance.outputs.influxdb.output import InfluxOutput
from appliance.outputs.mqtt.config import MqttConfig
from appliance.outputs.mqtt.output import MqttOutput
from appliance.records import TARIFF, Record, TariffRecord
from appliance.simulator import PARIS
from appliance.stats import Stats
from appliance.tariff import TariffEngine, TariffPublisher, parse_tariff
from appliance.tariff.lines import PERIOD_MEASUREMENT, TARIFF_MEASUREMENT, record_periods, tariff_lines
from appliance.tariff.periods import CONTRACT_PERIODS
from appliance.tic import Frame

from .ha_rules import Entity, check_discovery
from .mosquitto import Mosquitto, Subscriber
from .servers import InfluxD, VictoriaMetrics
from .test_ha import simulated
from .test_mqtt import cfg_for
from .test_tariff import PRICES
from .util import wait_until

ROOT = Path(__file__).resolve().parent.parent


def frames(mode: str, contract: str, start: datetime, step: float, n: int, seed: int = 4) -> list[Frame]:
    """``n`` decoded frames of a simulated meter, with their reception times."""
    return simulated(mode, start, seed, step, n, {"contract": contract})


def engine() -> TariffEngine:
    return TariffEngine(parse_tariff({"prices": [PRICES]}))


def publish_all(stream: list[Frame], interval: float = 60.0) -> tuple[TariffPublisher, list[TariffRecord]]:
    got: list[Record] = []
    pub = TariffPublisher(engine(), got.append, interval)
    for f in stream:
        pub.on_frame(f)
    assert all(isinstance(r, TariffRecord) for r in got)
    return pub, [r for r in got if isinstance(r, TariffRecord)]


def day_records(contract: str = "TEMPO", mode: str = "historique") -> list[TariffRecord]:
    """A Tempo (or other) meter from 21:30 to 00:30, every 5 minutes: a period change and a day change."""
    stream = frames(mode, contract, datetime(2024, 1, 16, 21, 30, tzinfo=PARIS), 300, 37)
    return publish_all(stream)[1]


# --- the record and when it is published ---------------------------------------------------------------------


def test_the_record_type() -> None:
    eng = engine()
    stream = frames("standard", "HCHP", datetime(2024, 1, 16, 12, tzinfo=PARIS), 60, 3)
    for f in stream:
        assert f.received_at is not None
        eng.update_frame(f.mode, f.values, f.meter, datetime.fromtimestamp(f.received_at, UTC))
    at = datetime(2024, 1, 16, 12, 5, tzinfo=PARIS)
    record = TariffRecord.from_engine(eng, at)
    assert record.kind == TARIFF == "tariff"
    assert (record.at, record.meter, record.mode) == (at.timestamp(), stream[0].meter, "standard")
    assert record.to_json() == eng.snapshot(at)
    assert record.to_json()["today"]["start"] == "2024-01-16T00:00:00+01:00"
    assert record.to_json()["month"]["start"] == "2024-01-01T00:00:00+01:00"
    with pytest.raises(AttributeError):
        record.meter = "x"  # type: ignore[misc]  # frozen: one object shared by every output thread


def test_published_on_period_change_and_at_most_once_a_minute() -> None:
    """HC/HP meter from 21:55 to 22:10 every 10 s: a record every minute, and one at once when HP turns to HC."""
    stream = frames("historique", "HCHP", datetime(2024, 1, 16, 21, 55, tzinfo=PARIS), 10, 90)
    pub, records = publish_all(stream)
    times = [r.at for r in records]
    periods = [r.snapshot["period"] for r in records]
    switch = periods.index("hc")
    first_hc = next(f for f in stream if f.values.get("PTEC") == "HC..")
    assert records[switch].at == first_hc.received_at  # not delayed by the minute
    for i in range(1, len(records)):
        if i != switch:
            assert times[i] - times[i - 1] >= 60
    assert 14 <= len(records) <= 18 and pub.published == len(records)
    assert pub.on_frame(Frame("historique", {"BASE": 1})) is None  # no reception time: not counted


def test_the_day_that_ended_is_published_whole() -> None:
    """At the first frame after midnight, the record of the day that ended comes first, stamped 23:59:59, with
    every Wh the engine put in that day (including the part of the last gap before midnight)."""
    stream = frames("standard", "TEMPO", datetime(2024, 1, 16, 23, 40, tzinfo=PARIS), 420, 6)
    got: list[Record] = []
    eng = engine()
    pub = TariffPublisher(eng, got.append)
    for f in stream:
        pub.on_frame(f)
    records = [r for r in got if isinstance(r, TariffRecord)]
    closing = next(r for r in records if datetime.fromtimestamp(r.at, PARIS).time().isoformat() == "23:59:59")
    after = records[records.index(closing) + 1]
    assert closing.snapshot["today"]["date"] == "2024-01-16" and after.snapshot["today"]["date"] == "2024-01-17"
    assert closing.snapshot["today"]["wh"] == sum(eng.day_energy(datetime(2024, 1, 16).date()).values())
    assert after.at > closing.at


# --- InfluxDB ------------------------------------------------------------------------------------------------


def documented_fields() -> dict[str, dict[str, str]]:
    """Measurement -> key -> type (``tag`` for tags), from docs/DATA_FORMAT.md section 7."""
    text = (ROOT / "docs" / "DATA_FORMAT.md").read_text(encoding="utf-8")
    section = text.split("## 7. Energy costs", 1)[1]
    out: dict[str, dict[str, str]] = {}
    for block in section.split("\n### ")[1:]:
        name = re.match(r"7\.\d+ `(\w+)`", block)
        if name is None:
            continue
        rows = re.findall(r"^\| (tag|field) \| `(\w+)` \|\s*(\w*)\s*\|", block, re.MULTILINE)
        out[name.group(1)] = {key: kind if kind == "tag" else typ for kind, key, typ in rows}
    return out


def python_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string"}[type(value)]


@pytest.mark.parametrize(("mode", "contract"), [("historique", "TEMPO"), ("standard", "HCHP"), ("standard", "BASE")])
def test_line_protocol_is_documented_and_typed(mode: str, contract: str) -> None:
    documented = documented_fields()
    assert set(documented) == {TARIFF_MEASUREMENT, PERIOD_MEASUREMENT}
    records = day_records(contract, mode)
    seen: dict[str, set[str]] = {}
    for record in records:
        lines = tariff_lines(record)
        points = [parse_line(line) for line in lines]
        assert points[0].measurement == TARIFF_MEASUREMENT and points[0].time == int(record.at)
        assert [p.tags["period"] for p in points[1:]] == record_periods(record.snapshot)
        assert set(CONTRACT_PERIODS[contract]) <= {p.tags["period"] for p in points[1:]}
        for p in points:
            schema = documented[p.measurement]
            assert {k for k, v in schema.items() if v == "tag"} == set(p.tags)
            for key, value in p.fields.items():
                assert schema.get(key) == python_type(value), (p.measurement, key, value)
                seen.setdefault(p.measurement, set()).add(key)
        assert points[0].fields["today_wh"] == record.snapshot["today"]["wh"]
        assert points[0].fields.get("month_cost") == pytest.approx(record.snapshot["month"]["cost"])
    assert {"price", "today_cost", "month_total", "period"} <= seen[TARIFF_MEASUREMENT]
    if contract == "TEMPO":
        assert {"tempo_today", "tempo_tomorrow"} <= seen[TARIFF_MEASUREMENT]


def test_unknown_values_leave_their_field_out() -> None:
    """No price (a day before any price set): no price and no cost fields, never another type; no meter: no
    point at all."""
    eng = TariffEngine(parse_tariff({"default_prices": False}))
    stream = frames("historique", "BASE", datetime(2024, 1, 16, 12, tzinfo=PARIS), 60, 3)
    got: list[Record] = []
    pub = TariffPublisher(eng, got.append)
    for f in stream:
        pub.on_frame(f)
    record = got[-1]
    assert isinstance(record, TariffRecord)
    [main, base] = [parse_line(line) for line in tariff_lines(record)]
    assert not {"price", "price_default", "today_cost", "today_total", "month_cost"} & set(main.fields)
    assert main.fields["today_unpriced_wh"] == main.fields["today_wh"] > 0
    assert "today_cost" not in base.fields and base.fields["today_wh"] > 0
    assert tariff_lines(TariffRecord(0.0, None, None, record.snapshot)) == []


# --- Home Assistant -------------------------------------------------------------------------------------------


def replay(records: list[TariffRecord], payloads: list[dict[str, Any]] | None = None) -> dict[str, Entity]:
    """Every record through the entities of the latest discovery, as HA takes them; returns the entities."""
    entities: dict[str, Entity] = {}
    for record, payload in zip(records, payloads or [r.to_json() for r in records], strict=True):
        assert record.meter is not None
        disc = tariff_discovery_payload(
            record.meter,
            record.mode,
            str(record.snapshot["currency"]),
            record_periods(record.snapshot),
            state="t/tariff",
            availability="t/a",
        )
        check_discovery(disc)
        for cid, c in disc["cmps"].items():
            entities.setdefault(cid, Entity(cid, c))
        for entity in entities.values():
            entity.receive(payload)  # raises Warned where HA would log
        snap = record.snapshot
        assert entities["tariff_price"].state == str(snap["price"]["value"])
        assert entities["tariff_energy_today"].state == str(snap["today"]["wh"])
        assert entities["tariff_total_month"].state == str(snap["month"]["total"])
        assert entities["tariff_cost_today"].last_reset == datetime.fromisoformat(snap["today"]["start"])
        for period, entry in snap["month"]["periods"].items():
            assert entities[f"tariff_{period}_energy_month"].state == str(entry["wh"])
            assert entities[f"tariff_{period}_cost_month"].state == str(entry["cost"])
        for period in record_periods(snap):
            if period not in snap["today"]["periods"]:
                assert entities[f"tariff_{period}_energy_today"].state == "0"
    return entities


def test_home_assistant_entities() -> None:
    """The price entity is what HA's Energy dashboard accepts as "entity with the current price" (energy/validate:
    a numeric state, a unit ending in /kWh; monetary would refuse that unit), costs are monetary totals with a
    last reset at local midnight, the period is readable, and every record replays without an HA warning."""
    records = day_records()
    entities = replay(records)
    price = entities["tariff_price"]
    float(price.state)
    assert price.config["unit_of_measurement"].endswith("/kWh") and "device_class" not in price.config
    assert price.attributes["origin"] == "config"
    assert entities["tariff_period"].state == "Heures creuses jours bleus"
    assert entities["tariff_period"].attributes == {"code": "tempo_blue_hc", "label": "HCJB"}
    for cid, e in entities.items():
        if "_cost_" in cid or "_total_" in cid:
            assert e.config["device_class"] == "monetary" and e.config["unit_of_measurement"] == "EUR"
    assert len([c for c in entities if c.startswith("tariff_tempo_")]) == 6 * 4
    assert entities["tariff_cost_today"].last_reset == datetime(2024, 1, 17, tzinfo=PARIS)


def test_an_unpriced_record_shows_unknown_not_zero() -> None:
    eng = TariffEngine(parse_tariff({"default_prices": False}))
    stream = frames("historique", "BASE", datetime(2024, 1, 16, 12, tzinfo=PARIS), 60, 3)
    for f in stream:
        assert f.received_at is not None
        eng.update_frame(f.mode, f.values, f.meter, datetime.fromtimestamp(f.received_at, UTC))
    record = TariffRecord.from_engine(eng, datetime(2024, 1, 16, 12, 3, tzinfo=PARIS))
    assert record.meter is not None
    disc = tariff_discovery_payload(record.meter, record.mode, "EUR", ["base"], state="t", availability="a")
    entities = {cid: Entity(cid, c) for cid, c in disc["cmps"].items()}
    for e in entities.values():
        e.receive(record.to_json())
    assert entities["tariff_price"].state == entities["tariff_cost_today"].state == "unknown"
    assert entities["tariff_base_cost_today"].state == "unknown"
    assert int(entities["tariff_energy_today"].state) > 0


# --- through the real outputs ---------------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as b:
        yield b


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_records_through_the_mqtt_output_into_mosquitto(broker: Mosquitto) -> None:
    """Tariff records through the MQTT output's record lane (the service's path): the discovery of the tariff
    entities retained before the first record, the record retained on <base>/<meter>/tariff (a late subscriber
    gets the latest), discovery again on Home Assistant's birth message, and every message received replayed
    through HA's rules without a warning."""
    records = day_records()
    meter = records[0].meter
    assert meter is not None
    state_topic = tariff_state_topic("teleinfo", meter)
    disc_topic = tariff_discovery_topic("homeassistant", meter)
    with Subscriber(broker.port, ["teleinfo/#", "homeassistant/#"]) as sub:
        worker = OutputWorker(MqttOutput(cfg_for(broker)), Stats(), backoff_initial=0.1)
        worker.start()
        try:
            assert worker.accepts(TARIFF)
            for record in records:
                worker.submit_record(record)
            wait_until(lambda: len(sub.on(state_topic)) == len(records), 10)
            # Once, or twice when the records were encoded before the connection announced what it knew.
            announced = len(sub.on(disc_topic))
            assert announced in (1, 2)
            sub.publish("homeassistant/status", b"online")
            wait_until(lambda: len(sub.on(disc_topic)) == announced + 1, 5)
        finally:
            worker.stop(5)
        topics = [t for t, *_ in sub.messages]
        assert topics.index(disc_topic) < topics.index(state_topic)
        payloads = [json.loads(p) for p in sub.on(state_topic)]
        assert payloads == [json.loads(json.dumps(r.to_json())) for r in records]
        disc = json.loads(sub.on(disc_topic)[0])
        check_discovery(disc)
        assert disc["dev"]["ids"] == [f"linky_{meter}"] and disc["state_topic"] == state_topic
        replay(records, payloads)
    with Subscriber(broker.port, [state_topic, disc_topic]) as late:
        wait_until(lambda: len(late.messages) == 2, 5)
        retained = {t: (json.loads(p), r) for t, p, r, _ in late.messages}
        assert retained[state_topic] == (payloads[-1], True) and retained[disc_topic][1] is True


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_records_through_the_influxdb_output_into_victoriametrics(tmp_path: Path) -> None:
    """Tariff records through the InfluxDB output's record lane into a real VictoriaMetrics, read back."""
    records = day_records()
    vm = VictoriaMetrics()
    vm.start(tmp_path)
    try:
        stats = Stats()
        worker = OutputWorker(InfluxOutput(InfluxConfig(enabled=True, url=vm.url, timeout=2.0)), stats)
        worker.start()
        try:
            assert worker.accepts(TARIFF)
            for record in records:
                worker.submit_record(record)
            want = sum(len(tariff_lines(r)) for r in records)
            wait_until(lambda: _written(stats) == want, 15)
        finally:
            worker.stop(5)
        series = {
            (s["metric"]["__name__"], s["metric"].get("period", "")): dict(
                zip((t // 1000 for t in s["timestamps"]), s["values"], strict=True)
            )
            for s in vm.export('{__name__=~"teleinfo_tariff.*"}')
        }
    finally:
        vm.stop()
    last = records[-1]
    at = int(last.at)
    assert series[("teleinfo_tariff_today_wh", "")][at] == last.snapshot["today"]["wh"]
    assert series[("teleinfo_tariff_price", "")][at] == pytest.approx(last.snapshot["price"]["value"])
    for period, entry in last.snapshot["month"]["periods"].items():
        assert series[("teleinfo_tariff_period_month_wh", period)][at] == entry["wh"]
        assert series[("teleinfo_tariff_period_month_cost", period)][at] == pytest.approx(entry["cost"])
    assert len(series[("teleinfo_tariff_today_wh", "")]) == len(records)


def _written(stats: Stats) -> int | None:
    records = stats.snapshot().outputs["influxdb"].records
    return (records.get(TARIFF) or {}).get("written")


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_field_types_in_influxd(tmp_path: Path) -> None:
    """influxd 1.6.7's strict parser takes every line, and stores exactly the types section 7 documents."""
    influx = InfluxD()
    influx.start(tmp_path)
    try:
        influx.execute('CREATE DATABASE "tariff"')
        lines = [line for r in day_records() + day_records("EJP", "standard") for line in tariff_lines(r)]
        body = "\n".join(lines).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{influx.http_port}/write?db=tariff&precision=s", data=body)
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 (http://127.0.0.1 only)
            assert r.status == 204
        types: dict[str, dict[str, str]] = {}
        for result in influx.query("tariff", "SHOW FIELD KEYS")["results"]:
            for s in result["series"]:
                types[s["name"]] = dict(s["values"])
        tags = {row["tagKey"] for row in influx.rows("tariff", f'SHOW TAG KEYS FROM "{PERIOD_MEASUREMENT}"')}
    finally:
        influx.stop()
    documented = documented_fields()
    for measurement, fields in types.items():
        assert fields == {k: v for k, v in documented[measurement].items() if v != "tag"}, measurement
    assert tags == {"meter", "period"}


def test_records_wait_for_the_meter() -> None:
    """Before any frame named the meter, the record goes nowhere: neither MQTT nor InfluxDB can file it."""
    record = TariffRecord(time.time(), None, None, engine().snapshot(datetime.now(PARIS)))
    assert MqttOutput(MqttConfig(enabled=True)).encode(record) == []
    assert InfluxOutput(InfluxConfig()).encode(record) == []
