"""Home Assistant discovery (``appliance/ha.py``) against docs/NETWORK.md §1 and HA's own rules (``tests/ha_rules.py``:
HA Core itself needs Python >= 3.13, so its rules are encoded there from its source), and the templates rendered
the way HA renders them (Jinja2's immutable sandbox, ``value_json`` and ``this``) on real frames."""

from __future__ import annotations

import doctest
import json
import re
from datetime import datetime
from typing import Any

import pytest

from appliance import ha
from appliance.lineproto import field_key
from appliance.simulator import PARIS, MeterSimulator
from appliance.tariff.periods import PERIOD_NAMES, PTEC_PERIODS
from appliance.tic import HISTORIQUE, STANDARD, Decoder, Frame

from .ha_rules import Entity, Refused, Warned, check_component, check_discovery
from .ha_rules import render as ha_render

METER = "064468368739"
ID_RE = re.compile(r"[a-zA-Z0-9_-]+")


def frames(mode: str, n: int = 3, **kw: Any) -> list[Frame]:
    sim = MeterSimulator(mode=mode, start=datetime(2024, 1, 15, 8, tzinfo=PARIS), seed=3, **kw)  # type: ignore[arg-type]
    dec = Decoder(mode)  # type: ignore[arg-type]
    it = sim.frames()
    out: list[Frame] = []
    while len(out) < n:
        out.extend(dec.feed(next(it).data))
    return out


def render(template: str, payload: dict[str, Any], state: str = "unknown") -> str:
    """A value_template rendered as HA's MqttValueTemplate does (sandboxed, value, value_json, this)."""
    return ha_render(template, payload, state)


def test_doctests() -> None:
    result = doctest.testmod(ha)
    assert result.attempted >= 4 and result.failed == 0


def test_topics() -> None:
    assert ha.state_topic("teleinfo", METER) == f"teleinfo/{METER}/state"
    assert ha.discovery_topic("homeassistant", METER) == f"homeassistant/device/linky_{METER}/config"
    topic = ha.availability_topic("teleinfo", "teleinfo-pi#1+x")
    assert topic == "teleinfo/bridge/teleinfo-pi_1_x/status"
    assert not set("+#") & set(topic)


@pytest.mark.parametrize(
    ("mode", "kw"),
    [
        ("standard", {"phases": 3, "contract": "TEMPO", "producer": True}),
        ("standard", {"contract": "BASE"}),
        ("historique", {"phases": 3, "contract": "TEMPO"}),
        ("historique", {"contract": "HCHP"}),
    ],
)
def test_discovery_payload_follows_network_md(mode: str, kw: dict[str, Any]) -> None:
    frame = frames(mode, 1, **kw)[0]
    meter = frame.meter
    assert meter is not None
    labels = ha.usable_labels(mode, frame.values)
    p = ha.discovery_payload(meter, mode, labels, state="t/s", availability="t/a", qos=1)
    # Device-based discovery: dev and o are mandatory, availability and state shared by every component.
    assert p["dev"]["ids"] == [f"linky_{meter}"] and p["dev"]["mf"] == "Enedis" and p["dev"]["sn"] == meter
    assert p["o"]["name"] and p["o"]["sw"]
    assert (p["state_topic"], p["availability_topic"]) == ("t/s", "t/a")
    assert (p["payload_available"], p["payload_not_available"]) == ("online", "offline")
    assert ID_RE.fullmatch(f"linky_{meter}")
    assert p["cmps"], "no entity at all"
    check_discovery(p)  # HA's schema: every component acceptable to HA 2024.12 and later
    for cid, c in p["cmps"].items():
        assert ID_RE.fullmatch(cid), cid
        assert c["p"] in ("sensor", "binary_sensor")
        assert c["unique_id"] == f"{meter}_{cid}"
        # HA >= 2025.10 reads default_entity_id; older versions object_id (ignored, no warning, from 2026.4 on).
        assert c["default_entity_id"] == f"{c['p']}.linky_{meter}_{cid}" == f"{c['p']}.{c['object_id']}"
        assert c.get("device_class") != "reactive_energy"  # HA < 2025.6 would refuse the entity
    ids = [c["unique_id"] for c in p["cmps"].values()]
    assert len(ids) == len(set(ids))
    # The unit and state-class rules of check_discovery ran on these: every meter has energy indexes, an
    # apparent power, a current.
    assert {"energy", "apparent_power", "current"} <= {c.get("device_class") for c in p["cmps"].values()}


def test_units_and_classes() -> None:
    labels = [s for s in STANDARD if s not in ("ADSC", "PRM", "DATE")]
    c = ha.components("standard", METER, labels)
    for key in ["east", "eait", *(f"easf{i:02d}" for i in range(1, 11)), "easd01"]:
        assert (c[key]["device_class"], c[key]["state_class"], c[key]["unit_of_measurement"]) == (
            "energy",
            "total_increasing",
            "Wh",
        )
    for key in ("sinsts", "sinsts1", "smaxsn", "smaxsn_1", "sinsti"):
        assert (c[key]["device_class"], c[key]["unit_of_measurement"]) == ("apparent_power", "VA")
    for key in ("pref", "pcoup"):  # kVA in the TIC, VA for HA: converted by the template
        assert (c[key]["device_class"], c[key]["unit_of_measurement"]) == ("apparent_power", "VA")
        assert "* 1000" in c[key]["value_template"] and "state_class" not in c[key]
    assert c["erq1"]["unit_of_measurement"] == "varh" and c["erq1"]["state_class"] == "total_increasing"
    assert "device_class" not in c["erq1"]  # reactive_energy: HA 2025.6+ only; older versions refuse the entity
    assert (c["irms1"]["device_class"], c["urms1"]["device_class"], c["ccasn"]["device_class"]) == (
        "current",
        "voltage",
        "power",
    )
    for key in ("ltarf", "ngtf", "msg1"):  # tariff text: no unit, no state class
        assert not {"unit_of_measurement", "state_class", "device_class"} & set(c[key])
    assert not [k for k in c if k.startswith("relais")]  # RELAIS alone: relays get entities once seen closed
    for key in ("dpm1", "fpm3"):  # mobile-peak dates: the horodate is the state, never the value 0
        assert c[key]["device_class"] == "timestamp" and "timestamps" in c[key]["value_template"]
    h = ha.components("historique", METER, [s for s in HISTORIQUE if s != "ADCO"])
    assert h["ptec"]["device_class"] == "enum" and "Heures creuses jours blancs" in h["ptec"]["options"]
    assert h["demain"]["options"] == ["Non annoncée", "Bleu", "Blanc", "Rouge"]
    assert (h["papp"]["device_class"], h["pmax"]["device_class"], h["iinst"]["device_class"]) == (
        "apparent_power",
        "power",
        "current",
    )
    assert h["hchc"]["state_class"] == "total_increasing" and h["optarif"]["entity_category"] == "diagnostic"


def test_every_label_ha_can_use_has_an_entity() -> None:
    """Every label of both specifications gets an entity, except the address, PRM and DATE."""
    for mode, table in (("standard", STANDARD), ("historique", HISTORIQUE)):
        c = ha.components(mode, METER, list(table))
        for label in table:
            key = label.lower().replace("-", "_").replace("+", "_p")
            assert (key in c) == (label not in ("ADSC", "ADCO", "PRM", "DATE", "RELAIS")), (mode, label)
    assert ha.components("standard", METER, ["SINST1"]) == {}  # outside the specification: no entity


def test_unused_index_at_zero_gets_no_entity() -> None:
    assert ha.usable_labels("standard", {"ADSC": METER, "EAST": 5, "EASF02": 0, "SINSTS": 0}) == {"EAST", "SINSTS"}


def test_relays_only_once_seen_closed_and_tempo_only_when_shown() -> None:
    """RELAIS 140 = relays 3, 4 and 8 closed (54E example); a meter whose RELAIS stays 0 gets no relay entity.
    Tempo colours: from STGE bits 24-27 once they say a colour (standard), from a Tempo PTEC or DEMAIN
    (historique); a BASE meter gets none."""
    assert ha.usable_labels("standard", {"RELAIS": 140}) == {"relais_3", "relais_4", "relais_8"}
    assert ha.usable_labels("standard", {"RELAIS": 0, "STGE": "003A0001"}) == {"STGE"}
    assert {"tempo_today", "tempo_tomorrow"} <= ha.usable_labels("standard", {"STGE": "013A0001"})
    assert {"tempo_today", "tempo_tomorrow"} <= ha.usable_labels("historique", {"PTEC": "HPJR"})
    assert "tempo_today" not in ha.usable_labels("historique", {"PTEC": "HP..", "OPTARIF": "HC.."})


def label_of(mode: str, cid: str) -> str | None:
    table = STANDARD if mode == "standard" else HISTORIQUE
    return next((label for label in table if field_key(label) == cid), None)


def wanted(mode: str, cid: str, frame: Frame, payload: dict[str, Any]) -> str | None:
    """The state HA must show after ``frame`` (None: the frame says nothing, the state is kept), from the frame
    itself and the specification's tables, independently of the templates."""
    v = frame.values
    if cid.startswith("relais_"):
        return None if "RELAIS" not in v else ("on" if int(v["RELAIS"]) >> (int(cid[7:]) - 1) & 1 else "off")
    if cid in ("tempo_today", "tempo_tomorrow"):
        colours = {"blue": "Bleu", "white": "Blanc", "red": "Rouge"}
        if mode == "standard":
            if "stge" not in payload:
                return None
            colour = payload["stge"][cid]
            return colours[colour] if colour else ("unknown" if cid == "tempo_today" else "Non annoncée")
        if cid == "tempo_today":
            period = PTEC_PERIODS.get(str(v["PTEC"]), "") if "PTEC" in v else None
            return None if period is None else colours.get(period.split("_")[1], "unknown") if period else "unknown"
        return (
            None
            if "DEMAIN" not in v
            else {"----": "Non annoncée", "BLEU": "Bleu", "BLAN": "Blanc"}.get(str(v["DEMAIN"]), "Rouge")
        )
    label = label_of(mode, cid)
    assert label is not None, cid
    if label in ("DPM1", "DPM2", "DPM3", "FPM1", "FPM2", "FPM3"):
        stamp = frame.timestamps.get(label)
        return "unknown" if stamp is None else datetime.fromisoformat(stamp).replace(tzinfo=PARIS).isoformat()
    if label not in v:
        return "unknown" if label in ("ADPS", "ADIR1", "ADIR2", "ADIR3", "PEJP") else None
    value = v[label]
    if label in ("PREF", "PCOUP"):
        return str(int(value) * 1000)
    if label == "PTEC":
        return PERIOD_NAMES[PTEC_PERIODS[str(value)]]
    if label == "DEMAIN":
        return {"----": "Non annoncée", "BLEU": "Bleu", "BLAN": "Blanc", "ROUG": "Rouge"}[str(value)]
    if label == "OPTARIF":
        return {"BASE": "Base", "HC..": "Heures creuses", "EJP.": "EJP"}.get(str(value), "Tempo")
    return " ".join(str(value).split())


STREAMS = {
    # a mobile-peak day (DPM1/FPM1 from 20:00), relay 1 closing at 22:00, a producer's ERQ1-4
    "standard tempo producer": ("standard", datetime(2024, 1, 16, 19, 50), 4, 600, 20,
                                {"contract": "TEMPO", "phases": 3, "producer": True}),
    "standard base": ("standard", datetime(2024, 3, 1, 21, 50), 5, 600, 6, {"contract": "BASE"}),
    # short frames (ADCO, IINST1-3, ADIR2: no PTEC, no DEMAIN, no HHPHC) around 18:53
    "historique tempo three-phase": ("historique", datetime(2024, 1, 15, 18, 52, 50), 3, None, 60,
                                     {"contract": "TEMPO", "phases": 3}),
    "historique hchp": ("historique", datetime(2024, 1, 15, 21, 59), 3, 30, 6, {"contract": "HCHP"}),
}  # fmt: skip


def simulated(mode: str, start: datetime, seed: int, step: float | None, n: int, kw: dict[str, Any]) -> list[Frame]:
    """``n`` frames of a simulated meter, decoded, with their simulated reception times."""
    sim = MeterSimulator(mode=mode, start=start.replace(tzinfo=PARIS), seed=seed, **kw)  # type: ignore[arg-type]
    dec = Decoder(mode)  # type: ignore[arg-type]
    out: list[Frame] = []
    it = sim.frames(step=step)
    while len(out) < n:
        sim_frame = next(it)
        out.extend(f.received(sim_frame.at.timestamp()) for f in dec.feed(sim_frame.data))
    return out[:n]


def stream(name: str) -> list[Frame]:
    mode, start, seed, step, n, kw = STREAMS[name]
    return simulated(mode, start, seed, step, n, kw)


@pytest.mark.parametrize("name", list(STREAMS))
def test_a_stream_through_home_assistants_rules(name: str) -> None:
    """Every state message of a simulated stream, through every entity announced so far, the way HA's MQTT sensor
    and binary sensor take it: no warning (invalid option, invalid timestamp, non-numeric value), and the state
    each frame calls for: readable periods and colours with the meter's code as an attribute, mobile-peak dates
    as aware timestamps, collapsed text, the last value kept when a frame lacks a label, never "unknown" sent
    as an option."""
    frames_ = stream(name)
    mode = frames_[0].mode
    entities: dict[str, Entity] = {}
    seen: set[str] = set()
    for frame in frames_:
        payload = ha.state_payload(frame.to_json())
        seen |= ha.usable_labels(mode, frame.values)
        disc = ha.discovery_payload(METER, mode, seen, state="t/s", availability="t/a")
        check_discovery(disc)
        for cid, c in disc["cmps"].items():
            entities.setdefault(cid, Entity(cid, c))
        for cid, entity in entities.items():
            before = entity.state
            state = entity.receive(payload)  # raises Warned where HA would log
            want = wanted(mode, cid, frame, payload)
            assert state == (before if want is None else want), (name, cid, frame.values, before)
            if cid in ("ptec", "demain") and cid.upper() in frame.values:
                assert entity.attributes == {"code": frame.values[cid.upper()]}
            if cid in ("ltarf", "msg1", "ngtf") and cid.upper() in frame.values:
                assert entity.attributes == {"raw": frame.values[cid.upper()]}
    states = {cid: e.state for cid, e in entities.items()}
    if name == "standard tempo producer":
        assert states["dpm1"].endswith("+01:00") and states["tempo_today"] in ("Bleu", "Blanc", "Rouge")
        assert states["relais_1"] == "on" and not any(k.startswith("relais_") and k != "relais_1" for k in states)
        assert "device_class" not in entities["erq1"].config and states["erq1"] != "unknown"
    if name == "standard base":
        assert not any(k.startswith(("relais_", "tempo_")) for k in states)  # never used: never created
    if name == "historique tempo three-phase":
        assert any("PTEC" not in f.values for f in frames_)  # short frames were replayed
        assert states["ptec"] in PERIOD_NAMES.values() and states["tempo_today"] in ("Bleu", "Blanc", "Rouge")


def test_a_frame_lacking_a_closed_set_label_sends_no_value() -> None:
    """HA warned "Ignoring invalid option ... got 'unknown'" when a template sent its own unknown state back;
    now a missing PTEC/DEMAIN/HHPHC renders the current state when it is an option, else None (unknown)."""
    c = ha.components("historique", METER, ["PTEC", "DEMAIN", "HHPHC", "LTARF"])
    short = {"values": {"IINST1": 3}}
    for cid in ("ptec", "demain", "hhphc"):
        assert render(c[cid]["value_template"], short, "unknown") == "None"
        assert render(c[cid]["value_template"], short, "unavailable") == "None"
        option = c[cid]["options"][-1]
        assert render(c[cid]["value_template"], short, option) == option
        with pytest.raises(Warned, match="invalid option"):  # what the old template did, caught by the rules
            Entity(cid, {**c[cid], "value_template": "{{ this.state }}"}).receive(short)
    s = ha.components("standard", METER, ["LTARF", "NTARF"])
    assert render(s["ltarf"]["value_template"], {"values": {}}, "unknown") == "None"
    assert render(s["ltarf"]["value_template"], {"values": {}}, "HC BLEU") == "HC BLEU"
    assert render(s["ntarf"]["value_template"], {"values": {}}, "unavailable") == "None"


def test_missing_value_is_never_zero() -> None:
    """A label absent from a frame: numeric -> "" (HA keeps the last value), warnings -> None (unknown), text and
    enums -> the current state, relays -> "" (a binary sensor keeps its state)."""
    frame = frames("standard", 1, phases=3)[0]
    cmps = ha.components("standard", METER, [*frame.values, "ADPS", "relais_1"])
    empty = dict(frame.to_json(), values={}, timestamps={})
    del empty["relais"]
    for cid, c in cmps.items():
        if cid.startswith("relais_"):
            assert render(c["value_template"], empty, "on") == ""
        elif "unit_of_measurement" in c:
            assert render(c["value_template"], empty, "1234") == "", cid
        elif "options" in c:
            assert render(c["value_template"], empty, c["options"][0]) == c["options"][0], cid
        elif c.get("device_class") == "timestamp":
            assert render(c["value_template"], empty, "2024-01-16T06:00:00+01:00") == "None", cid
        else:
            assert render(c["value_template"], empty, "BASE") == "BASE", cid
    h = ha.components("historique", METER, ["ADPS", "PEJP", "IINST"])
    assert render(h["adps"]["value_template"], {"values": {}}) == "None"
    assert render(h["adps"]["value_template"], {"values": {"ADPS": 45}}) == "45"
    assert render(h["iinst"]["value_template"], {"values": {}}) == ""


def test_the_rules_catch_what_home_assistant_refuses() -> None:
    """The encoded rules are not vacuous: each refuses what HA refuses."""
    base = {"p": "sensor", "unique_id": "x", "value_template": "{{ 1 }}"}
    for bad in (
        {"device_class": "reactive_energy", "unit_of_measurement": "varh"},  # unknown before HA 2025.6
        {"device_class": "energy", "state_class": "measurement", "unit_of_measurement": "Wh"},
        {"device_class": "monetary", "unit_of_measurement": "EUR/kWh", "state_class": "total"},
        {"device_class": "monetary", "unit_of_measurement": "EUR", "state_class": "measurement"},
        {"device_class": "enum", "options": ["a"], "unit_of_measurement": "x"},
        {"object_id": "a", "default_entity_id": "sensor.b"},
        {"last_reset_value_template": "{{ 1 }}", "state_class": "measurement"},
    ):
        with pytest.raises(Refused):
            check_component("x", {**base, **bad})
    with pytest.raises(Warned, match="timezone"):
        Entity("t", {**base, "device_class": "timestamp", "value_template": "2025-01-23T06:00:00"}).receive({})
    with pytest.raises(Warned, match="non-numeric"):
        Entity("n", {**base, "unit_of_measurement": "W", "value_template": "unknown"}).receive({})


def test_peak_dates_get_the_offset_of_french_legal_time() -> None:
    """DPM/FPM horodates carry no season (54E: " " = not applicable); the state message gives them the offset of
    Europe/Paris on their date, the rest of the frame's JSON untouched."""
    frame = Frame("standard", {"DPM1": 0, "FPM1": 0}, {"DPM1": "2025-01-23T06:00:00", "FPM1": "2025-07-23T08:00:00",
                                                       "DATE": "2025-01-22T20:00:00+01:00"})  # fmt: skip
    original = frame.to_json()
    out = ha.state_payload(original)
    assert out["timestamps"] == {
        "DPM1": "2025-01-23T06:00:00+01:00",
        "FPM1": "2025-07-23T08:00:00+02:00",
        "DATE": "2025-01-22T20:00:00+01:00",
    }
    assert original["timestamps"]["DPM1"] == "2025-01-23T06:00:00"  # not modified in place
    assert out["values"] == original["values"]


def test_index_guard() -> None:
    g = ha.IndexGuard()
    dropped, g = g.check("historique", {"HCHC": 100, "HCHP": 50, "PAPP": 900}, 10.0)
    assert dropped == []
    dropped, g2 = g.check("historique", {"HCHC": 99, "HCHP": 51, "PAPP": 100}, 11.0)
    assert dropped == ["HCHC"] and g2.last["HCHC"] == (100, 10.0) and g2.last["HCHP"] == (51, 11.0)
    assert g.last["HCHC"] == (100, 10.0)  # immutable: the old state is untouched
    # A jump that 100 kW cannot explain is dropped, and does not become the baseline: real values go on.
    dropped, g3 = g2.check("historique", {"HCHC": 100_000_100}, 12.0)
    assert dropped == ["HCHC"]
    assert g3.check("historique", {"HCHC": 101}, 13.0)[0] == []
    # A long gap allows a large rise (an hour at 36 kVA), and no time means no rate check.
    assert g3.check("historique", {"HCHC": 36_100}, 3612.0)[0] == []
    assert g3.check("historique", {"HCHC": 10**8}, None)[0] == []
    assert ha.is_index("standard", "ERQ1") and not ha.is_index("standard", "SINSTS")


def test_state_payload_moves_dropped_labels_to_invalid() -> None:
    frame = frames("standard", 1)[0]
    original = frame.to_json()
    before = json.dumps(original)
    out = ha.state_payload(original, ["EAST", "NOT_THERE"])
    assert "EAST" not in out["values"] and "EAST" not in out["units"]
    assert out["invalid"] == [*original["invalid"], "EAST"]
    assert json.dumps(original) == before
    assert ha.state_payload(original, []) is original


def test_data_format_section_4_matches_the_code() -> None:
    """The discovery example of docs/DATA_FORMAT.md §4 is what the code publishes, byte for byte in meaning."""
    from pathlib import Path

    from appliance import __version__

    doc = (Path(__file__).resolve().parent.parent / "docs" / "DATA_FORMAT.md").read_text(encoding="utf-8")
    section = doc[doc.index("## 4. MQTT") : doc.index("## 5.")]
    example = json.loads(section[section.index("```json") + 7 : section.index("```", section.index("```json") + 7)])
    example["o"]["sw"] = example["dev"]["sw"] = __version__
    meter = example["dev"]["sn"]
    labels = [c["name"].rsplit("(", 1)[1].rstrip(")") for c in example["cmps"].values()]
    assert example == ha.discovery_payload(
        meter,
        "standard",
        labels,
        state=example["state_topic"],
        availability=example["availability_topic"],
    )
    for topic in ("`<base>/<meter>/state`", "`<base>/bridge/<client_id>/status`", "device/linky_<meter>/config"):
        assert topic in section
    assert ha.state_topic("teleinfo", meter) == example["state_topic"]
    assert ha.availability_topic("teleinfo", "teleinfo-pi") == example["availability_topic"]
