"""Home Assistant's MQTT rules, as the tests apply them to what the appliance publishes.

Home Assistant Core cannot run here (it needs Python >= 3.13; this machine and CI have 3.11), so the rules that
decide whether HA takes an entity and what state it shows are encoded here, read from HA's source (core
``homeassistant/components/mqtt/sensor.py``, ``binary_sensor.py``, ``models.py``, ``discovery.py``,
``components/sensor/const.py``, ``components/energy/validate.py``) and the MQTT docs, for the versions the
appliance supports (2024.12, the first with device-based discovery, to today).  Each rule says where it comes
from.  Templates are rendered like HA's ``MqttValueTemplate``: Jinja2's immutable sandbox with ``value``,
``value_json`` and ``this`` (the entity's current state object).  ``bench/ha_core.py`` checks the same messages
against the real HA Core (2025.4.4 and 2026.2.3, on a machine with Python 3.13) and compares the states HA shows
with those :class:`Entity` derives.

* :func:`check_component` raises :class:`Refused` for a component HA would refuse or log about at discovery.
* :class:`Entity` replays state messages through a component the way HA's MQTT sensor or binary sensor does,
  and raises :class:`Warned` where HA would log a warning (an invalid option, an invalid timestamp, a non-numeric
  value for a numeric sensor), so a test that replays a stream and gets no exception saw no HA warning.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest

jinja2_sandbox = pytest.importorskip("jinja2.sandbox")

__all__ = ["Entity", "Refused", "Warned", "check_component", "check_discovery", "render"]

#: ``homeassistant/const.py`` PAYLOAD_NONE: the rendered payload every MQTT sensor reads as "no value" (before the
#: numeric, enum and timestamp handling since core PR #127032, HA 2024.10).
PAYLOAD_NONE = "None"
#: Device classes of HA 2024.12's ``SensorDeviceClass`` that the appliance uses, with the units each accepts
#: (``sensor/const.py`` DEVICE_CLASS_UNITS).  ``reactive_energy`` is absent on purpose: it arrived in 2025.6
#: (core PR #143941), and an older HA refuses an entity that names it (DEVICE_CLASSES_SCHEMA).
UNITS: dict[str, set[str] | None] = {
    "energy": {"Wh", "kWh", "MWh", "GJ", "MJ"},
    "apparent_power": {"VA"},
    "power": {"W", "kW"},
    "current": {"A", "mA"},
    "voltage": {"V", "mV"},
    "duration": {"d", "h", "min", "s"},
    "monetary": None,  # any ISO 4217 currency code (checked apart)
    "timestamp": set(),
    "enum": set(),
}
#: ``sensor/const.py`` DEVICE_CLASS_STATE_CLASSES (the subset used): a state class outside it is logged.
STATE_CLASSES: dict[str, set[str]] = {
    "energy": {"total", "total_increasing"},
    "monetary": {"total"},
    "apparent_power": {"measurement"},
    "power": {"measurement"},
    "current": {"measurement"},
    "voltage": {"measurement"},
    "duration": {"measurement", "total", "total_increasing"},
    "timestamp": set(),
    "enum": set(),
}
NON_NUMERIC = {"enum", "timestamp", "date"}
#: ``homeassistant/core.py`` valid_entity_id.
ENTITY_ID = re.compile(r"^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$")
COMPONENT_ID = re.compile(r"[a-zA-Z0-9_-]+")  # discovery.py TOPIC_MATCHER: node and object ids
CURRENCY = re.compile(r"[A-Z]{3}")  # ISO 4217 codes (HA checks them against its list)
MAX_STATE = 255  # homeassistant/const.py MAX_LENGTH_STATE_STATE: a longer state is dropped with a warning


class Refused(AssertionError):
    """HA would refuse this component (schema error) or log a warning about it at every discovery."""


class Warned(AssertionError):
    """HA would log a warning (or an error) on this state message."""


def render(template: str, payload: str | dict[str, Any], state: str = "unknown", attributes: Any = None) -> str:
    """A template rendered like HA's MqttValueTemplate (sandboxed; ``value``, ``value_json``, ``this``), stripped."""
    env = jinja2_sandbox.ImmutableSandboxedEnvironment()
    text = payload if isinstance(payload, str) else json.dumps(payload)
    this = SimpleNamespace(state=state, attributes=attributes or {})
    return str(env.from_string(template).render(value=text, value_json=json.loads(text), this=this)).strip()


def numeric_expected(c: dict[str, Any]) -> bool:
    """MqttSensor._numeric_state_expected: a device class that is not enum/timestamp/date, a unit, a state class
    or a display precision."""
    dc = c.get("device_class")
    return (
        (dc is not None and dc not in NON_NUMERIC)
        or "unit_of_measurement" in c
        or "state_class" in c
        or "suggested_display_precision" in c
    )


def check_component(cid: str, c: dict[str, Any]) -> None:
    """Raise :class:`Refused` where HA's discovery schema or sensor checks would refuse or complain."""
    if not COMPONENT_ID.fullmatch(cid):
        raise Refused(f"{cid}: component id outside [a-zA-Z0-9_-]")
    if c.get("p") not in ("sensor", "binary_sensor") or not c.get("unique_id"):
        raise Refused(f"{cid}: device discovery needs p and unique_id")
    for key in ("default_entity_id",):
        if key in c and not ENTITY_ID.match(c[key]):
            raise Refused(f"{cid}: {c[key]!r} is not a valid entity id")
    if "object_id" in c and c.get("default_entity_id") != f"{c['p']}.{c['object_id']}":
        raise Refused(f"{cid}: object_id and default_entity_id must name the same entity on every HA version")
    if c["p"] == "binary_sensor":
        if {"unit_of_measurement", "state_class", "options"} & set(c):
            raise Refused(f"{cid}: not options of a binary sensor")
        return
    dc, unit, sc = c.get("device_class"), c.get("unit_of_measurement"), c.get("state_class")
    if dc is not None and dc not in UNITS:
        raise Refused(f"{cid}: device class {dc!r} unknown to HA 2024.12 (DEVICE_CLASSES_SCHEMA)")
    if "options" in c and (dc != "enum" or unit is not None or sc is not None):
        raise Refused(f"{cid}: options need device_class enum, no unit and no state class (sensor.mqtt docs)")
    if dc == "enum" and not c.get("options"):
        raise Refused(f"{cid}: an enum sensor needs its options")
    if dc == "monetary":
        if unit is None or not CURRENCY.fullmatch(unit):
            raise Refused(f"{cid}: monetary takes an ISO 4217 currency, not {unit!r} (a price per kWh has none)")
    elif dc is not None and unit is not None and unit not in (UNITS[dc] or set()):
        raise Refused(f"{cid}: unit {unit!r} is not valid for device class {dc!r}")
    if dc is not None and sc is not None and sc not in STATE_CLASSES.get(dc, set()):
        raise Refused(f"{cid}: state class {sc!r} impossible with device class {dc!r}")
    if "last_reset_value_template" in c and sc != "total":
        raise Refused(f"{cid}: last_reset_value_template needs state_class total")
    if "json_attributes_template" in c and "json_attributes_topic" not in c:
        raise Refused(f"{cid}: json_attributes_template without json_attributes_topic")


def check_discovery(payload: dict[str, Any]) -> None:
    """A device discovery message: dev and o are mandatory (discovery.py DEVICE_DISCOVERY_SCHEMA), unique ids
    unique, every component acceptable."""
    if not payload.get("dev", {}).get("ids") or not payload.get("o", {}).get("name"):
        raise Refused("device discovery needs dev (with ids) and o (with name)")
    ids = [c["unique_id"] for c in payload["cmps"].values()]
    if len(ids) != len(set(ids)):
        raise Refused("duplicate unique_id")
    for cid, c in payload["cmps"].items():
        check_component(cid, c)


@dataclass
class Entity:
    """One HA entity fed state messages: :attr:`state` is what HA's state machine shows (``unknown`` first)."""

    cid: str
    config: dict[str, Any]
    state: str = "unknown"
    attributes: dict[str, Any] = field(default_factory=dict)
    last_reset: datetime | None = None

    def receive(self, payload: str | dict[str, Any]) -> str:
        """Apply one message on the state topic as HA would; returns the new state; :class:`Warned` on a warning.

        sensor.py ``_state_message_received``: the state first, then ``last_reset`` from every message."""
        state = self._state(payload)
        if self.config["p"] == "sensor":
            self._last_reset(payload)
        return state

    def _state(self, payload: str | dict[str, Any]) -> str:
        c = self.config
        rendered = render(c["value_template"], payload, self.state, self.attributes)
        if "json_attributes_template" in c:
            self._attributes(payload)
        if c["p"] == "binary_sensor":
            return self._binary(rendered)
        if rendered == PAYLOAD_NONE:
            self.state = "unknown"
            return self.state
        if numeric_expected(c):
            if rendered == "":  # "Ignore empty state": the state is kept
                return self.state
            try:
                value = float(rendered)
            except ValueError:
                raise Warned(f"{self.cid}: non-numeric value {rendered!r} for a numeric sensor") from None
            if not math.isfinite(value):
                raise Warned(f"{self.cid}: {rendered!r}")
            self.state = rendered
            return self.state
        options = c.get("options")
        if options and rendered not in options:
            raise Warned(f"{self.cid}: Ignoring invalid option {rendered!r}, allowed: {options}")
        if c.get("device_class") in (None, "enum"):
            if len(rendered) > MAX_STATE:
                raise Warned(f"{self.cid}: state longer than {MAX_STATE}")
            self.state = rendered
            return self.state
        try:
            stamp = datetime.fromisoformat(rendered)
        except ValueError:
            raise Warned(f"{self.cid}: Invalid state message {rendered!r}") from None
        if stamp.tzinfo is None:  # sensor/__init__.py: a timestamp without a time zone is refused
            raise Warned(f"{self.cid}: {rendered!r} is missing timezone information")
        self.state = stamp.isoformat()
        return self.state

    def _binary(self, rendered: str) -> str:
        if not rendered:  # "Empty template output": ignored
            return self.state
        if rendered == "ON":
            self.state = "on"
        elif rendered == "OFF":
            self.state = "off"
        elif rendered == PAYLOAD_NONE:
            self.state = "unknown"
        else:
            raise Warned(f"{self.cid}: No matching payload {rendered!r}")
        return self.state

    def _attributes(self, payload: str | dict[str, Any]) -> None:
        rendered = render(self.config["json_attributes_template"], payload, self.state, self.attributes)
        try:
            attributes = json.loads(rendered)
        except ValueError:
            raise Warned(f"{self.cid}: Erroneous JSON {rendered!r}") from None
        if not isinstance(attributes, dict):
            raise Warned(f"{self.cid}: JSON result was not a dictionary")
        self.attributes = attributes

    def _last_reset(self, payload: str | dict[str, Any]) -> None:
        template = self.config.get("last_reset_value_template")
        if template is None:
            return
        rendered = render(template, payload, self.state, self.attributes)
        if not rendered:  # "Ignoring empty last_reset message"
            return
        try:
            self.last_reset = datetime.fromisoformat(rendered)
        except ValueError:
            raise Warned(f"{self.cid}: Invalid last_reset message {rendered!r}") from None
