"""Home Assistant discovery (``appliance/ha.py``) against docs/NETWORK.md §1 and HA's own rules, and the templates
rendered the way HA renders them (Jinja2's immutable sandbox, ``value_json`` and ``this``) on real frames."""

from __future__ import annotations

import doctest
import json
import re
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest

from appliance import ha
from appliance.simulator import PARIS, MeterSimulator
from appliance.tic import HISTORIQUE, STANDARD, Decoder, Frame

jinja2_sandbox = pytest.importorskip("jinja2.sandbox")

METER = "064468368739"
ID_RE = re.compile(r"[a-zA-Z0-9_-]+")
#: HA core ``sensor/const.py``: units each device class accepts (the subset used here).
HA_UNITS = {
    "energy": {"Wh", "kWh", "MWh"},
    "reactive_energy": {"varh", "kvarh"},
    "apparent_power": {"VA"},
    "power": {"W", "kW"},
    "current": {"A", "mA"},
    "voltage": {"V", "mV"},
    "duration": {"d", "h", "min", "s"},
}
HA_STATE_CLASSES = {
    "energy": {"total", "total_increasing"},
    "reactive_energy": {"total", "total_increasing"},
}


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
    env = jinja2_sandbox.ImmutableSandboxedEnvironment()
    text = json.dumps(payload)
    this = SimpleNamespace(state=state, attributes={})
    return str(env.from_string(template).render(value=text, value_json=json.loads(text), this=this)).strip()


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
    for cid, c in p["cmps"].items():
        assert ID_RE.fullmatch(cid), cid
        assert c["p"] in ("sensor", "binary_sensor")
        assert c["unique_id"].startswith(meter + "_")
        assert "object_id" not in c and c["default_entity_id"] == f"{c['p']}.linky_{meter}_{cid}"
        dc, unit, sc = c.get("device_class"), c.get("unit_of_measurement"), c.get("state_class")
        if dc in HA_UNITS:
            assert unit in HA_UNITS[dc], (cid, dc, unit)
        if dc in HA_STATE_CLASSES:
            assert sc in HA_STATE_CLASSES[dc], (cid, dc, sc)  # energy + measurement is refused by HA
        if "options" in c:  # "options cannot be used together with state_class or unit_of_measurement"
            assert dc == "enum" and unit is None and sc is None
    ids = [c["unique_id"] for c in p["cmps"].values()]
    assert len(ids) == len(set(ids))
    # The unit and state-class rules above ran: every meter has energy indexes, an apparent power, a current.
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
    assert (c["irms1"]["device_class"], c["urms1"]["device_class"], c["ccasn"]["device_class"]) == (
        "current",
        "voltage",
        "power",
    )
    for key in ("ltarf", "ngtf", "msg1"):  # tariff text: no unit, no state class
        assert not {"unit_of_measurement", "state_class", "device_class"} & set(c[key])
    assert [f"relais_{i}" for i in range(1, 9)] == [k for k in c if k.startswith("relais")]
    h = ha.components("historique", METER, [s for s in HISTORIQUE if s != "ADCO"])
    assert h["ptec"]["device_class"] == "enum" and "HP.." in h["ptec"]["options"]
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
            key = "relais_1" if label == "RELAIS" else label.lower().replace("-", "_").replace("+", "_p")
            assert (key in c) == (label not in ("ADSC", "ADCO", "PRM", "DATE")), (mode, label)
    assert ha.components("standard", METER, ["SINST1"]) == {}  # outside the specification: no entity


def test_unused_index_at_zero_gets_no_entity() -> None:
    assert ha.usable_labels("standard", {"ADSC": METER, "EAST": 5, "EASF02": 0, "SINSTS": 0}) == {"EAST", "SINSTS"}


@pytest.mark.parametrize("mode", ["standard", "historique"])
def test_templates_render_like_home_assistant(mode: str) -> None:
    frame = frames(mode, 1, phases=3, contract="TEMPO")[0]
    payload = frame.to_json()
    cmps = ha.components(mode, METER, frame.values)
    assert cmps
    for cid, c in cmps.items():
        got = render(c["value_template"], payload)
        if cid.startswith("relais_"):
            assert got == ("ON" if payload["relais"][int(cid[-1]) - 1] else "OFF")
            continue
        label = next(k for k in frame.values if k.lower().replace("-", "_").replace("+", "_p") == cid)
        value = frame.values[label]
        want = value * 1000 if label in ("PREF", "PCOUP") else value
        assert got == str(want), (cid, got, want)
        if "options" in c:
            assert got in c["options"]


def test_missing_value_is_never_zero() -> None:
    """A label absent from a frame: numeric -> "" (HA keeps the last value), warnings -> None (unknown), text ->
    the current state, relays -> their current state."""
    frame = frames("standard", 1, phases=3)[0]
    cmps = ha.components("standard", METER, [*frame.values, "ADPS"])
    empty = dict(frame.to_json(), values={}, relais=None)
    del empty["relais"]
    for cid, c in cmps.items():
        if cid.startswith("relais_"):
            assert render(c["value_template"], empty, "on") == "ON"
            assert render(c["value_template"], empty, "unknown") == "None"
        elif "unit_of_measurement" in c:
            assert render(c["value_template"], empty, "1234") == "", cid
        else:
            assert render(c["value_template"], empty, "BASE") == "BASE", cid
    h = ha.components("historique", METER, ["ADPS", "PEJP", "IINST"])
    assert render(h["adps"]["value_template"], {"values": {}}) == "None"
    assert render(h["adps"]["value_template"], {"values": {"ADPS": 45}}) == "45"
    assert render(h["iinst"]["value_template"], {"values": {}}) == ""


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
    example["o"]["sw"] = __version__
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
