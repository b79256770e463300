"""Home Assistant MQTT discovery for a Linky meter, and the state filter that keeps its energy dashboard right.

Pure: topics, payloads and filters only; :mod:`appliance.outputs.mqtt.output` does the publishing.  The layout is the
contract of ``docs/DATA_FORMAT.md`` §4 and follows NETWORK.md §1:

* **Device-based discovery** (HA >= 2024.12): one retained message per meter on
  ``<prefix>/device/linky_<meter>/config`` whose ``cmps`` hold one component per label HA can use.  ``dev`` and
  ``o`` are mandatory; ``default_entity_id`` replaces the deprecated ``object_id``; every ``unique_id`` starts
  with the meter id, so two meters on one broker never collide.
* **State**: every component reads the frame's JSON on ``<base>/<meter>/state`` through a ``value_template``.
  A label missing from a frame never becomes 0: numeric sensors render ``""``, which HA ignores (it keeps the
  last value); text sensors render their current state (``this.state``); warnings that only exist while they
  last (ADPS, ADIR1-3, PEJP) render ``None``, which HA shows as unknown.
* **Availability**: one topic per appliance, ``<base>/bridge/<client id>/status``, driven by the MQTT last will
  (retained ``online``/``offline``).  The last will must be set before connecting, when the meter is not known
  yet, and a per-client topic keeps two appliances on one broker from marking each other's meter offline.
* **Units**: energy indexes are ``energy``/``total_increasing``/``Wh``; PREF and PCOUP, which the TIC gives in
  **kVA**, are converted to VA by their template (HA's ``apparent_power`` only knows VA), while the state JSON
  keeps the meter's kVA like ``teleinfo decode``; tariff text has no unit and no state class; closed sets
  (PTEC, DEMAIN, HHPHC) are ``enum`` with their options.

:class:`IndexGuard` drops an energy index lower than the last one published (``total_increasing`` reads any
decrease as a meter reset and would count the whole index again as consumption), and one rising faster than
any Linky can count, so that a corrupted reading can never become a baseline that blocks the real ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from appliance import __version__
from appliance.lineproto import field_key
from appliance.tic.labels import Kind, LabelSpec, spec_for

__all__ = [
    "ORIGIN",
    "IndexGuard",
    "availability_topic",
    "components",
    "discovery_payload",
    "discovery_topic",
    "is_index",
    "state_payload",
    "state_topic",
    "usable_labels",
]

ORIGIN: Final = {"name": "teleinfo-appliance", "sw": __version__}
#: Labels that are no entity: the meter's address (the device itself), personal data, the frame's clock.
_NOT_ENTITIES: Final = frozenset({"ADCO", "ADSC", "PRM", "DATE"})
#: Settings and identifiers: shown under "Diagnostic" in HA, no long-term statistics.
_DIAGNOSTIC: Final = frozenset({"VTIC", "OPTARIF", "ISOUSC", "PREF", "PCOUP", "HHPHC", "MOTDETAT", "PPOT", "STGE"})
#: Present only while the condition lasts: their absence means "no warning", not "keep the last value".
_WHILE_PRESENT: Final = frozenset({"ADPS", "ADIR1", "ADIR2", "ADIR3", "PEJP"})
#: Settings: numeric with a unit, but statistics over them are meaningless.
_SETTINGS: Final = frozenset({"ISOUSC", "PREF", "PCOUP"})
#: TIC unit -> (device_class, HA unit, state_class) for the integer kinds (NETWORK.md §1.4).
_BY_UNIT: Final[dict[str, tuple[str | None, str, str | None]]] = {
    "Wh": ("energy", "Wh", "total_increasing"),
    "VArh": ("reactive_energy", "varh", "total_increasing"),
    "VA": ("apparent_power", "VA", "measurement"),
    "kVA": ("apparent_power", "VA", None),  # x1000 in the template
    "W": ("power", "W", "measurement"),
    "A": ("current", "A", "measurement"),
    "V": ("voltage", "V", "measurement"),
    "min": ("duration", "min", None),
}
_RELAYS: Final = 8
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")


# --- topics ------------------------------------------------------------------------------------------------
def state_topic(base: str, meter: str) -> str:
    """``<base>/<meter>/state``: the frame's JSON (non-retained)."""
    return f"{base}/{meter}/state"


def availability_topic(base: str, client_id: str) -> str:
    """``<base>/bridge/<client id>/status``: ``online``/``offline``, retained, the last will of the connection.

    Characters that MQTT topics reserve (``/``, ``+``, ``#``) or that HA ids refuse become ``_``.

    >>> availability_topic("teleinfo", "teleinfo-pi/2")
    'teleinfo/bridge/teleinfo-pi_2/status'
    """
    return f"{base}/bridge/{_SAFE_ID.sub('_', client_id)}/status"


def discovery_topic(prefix: str, meter: str) -> str:
    """``<prefix>/device/linky_<meter>/config`` (device-based discovery, retained)."""
    return f"{prefix}/device/linky_{meter}/config"


# --- entities ----------------------------------------------------------------------------------------------
def is_index(mode: str, label: str) -> bool:
    """Whether ``label`` is an energy index (``total_increasing``): it must never be published going down."""
    spec = spec_for(mode, label)
    return spec is not None and spec.kind is Kind.INT and spec.unit in ("Wh", "VArh")


def _present(label: str) -> str:
    return f"'{label}' in value_json['values']"


def _value(label: str) -> str:
    return f"value_json['values']['{label}']"


def _numeric_template(label: str, scale: int = 1, missing: str = "") -> str:
    value = _value(label) + (f" * {scale}" if scale != 1 else "")
    if missing:
        return f"{{{{ {value} if {_present(label)} else '{missing}' }}}}"
    return f"{{% if {_present(label)} %}}{{{{ {value} }}}}{{% endif %}}"


def _text_template(label: str) -> str:
    return f"{{{{ {_value(label)} if {_present(label)} else this.state }}}}"


def _sensor(spec: LabelSpec, meter: str) -> dict[str, Any] | None:
    label = spec.label
    key = field_key(label)
    cfg: dict[str, Any] = {
        "p": "sensor",
        "name": f"{spec.meaning} ({label})",
        "unique_id": f"{meter}_{key}",
        "default_entity_id": f"sensor.linky_{meter}_{key}",
    }
    if label in _DIAGNOSTIC:
        cfg["entity_category"] = "diagnostic"
    if spec.kind is Kind.INT and spec.unit in _BY_UNIT:
        device_class, unit, state_class = _BY_UNIT[spec.unit]
        if label in _SETTINGS:
            state_class = None
        if device_class:
            cfg["device_class"] = device_class
        cfg["unit_of_measurement"] = unit
        if state_class:
            cfg["state_class"] = state_class
        scale = 1000 if spec.unit == "kVA" else 1
        cfg["value_template"] = _numeric_template(label, scale, "None" if label in _WHILE_PRESENT else "")
        return cfg
    if spec.kind is Kind.ENUM:
        cfg["device_class"] = "enum"
        cfg["options"] = list(spec.choices)
    cfg["value_template"] = _text_template(label)  # text, enums, unitless numbers (NTARF, DPM1...)
    return cfg


def _relays(meter: str) -> dict[str, dict[str, Any]]:
    """RELAIS as 8 binary sensors from the decoded ``relais`` array (relay 1 is the dry contact)."""
    out = {}
    for i in range(_RELAYS):
        keep = "'ON' if this.state == 'on' else 'OFF' if this.state == 'off' else 'None'"
        out[f"relais_{i + 1}"] = {
            "p": "binary_sensor",
            "name": f"Relais {i + 1}",
            "unique_id": f"{meter}_relais_{i + 1}",
            "default_entity_id": f"binary_sensor.linky_{meter}_relais_{i + 1}",
            "value_template": (
                f"{{% if 'relais' in value_json %}}{{{{ 'ON' if value_json['relais'][{i}] else 'OFF' }}}}"
                f"{{% else %}}{{{{ {keep} }}}}{{% endif %}}"
            ),
        }
    return out


def components(mode: str, meter: str, labels: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The ``cmps`` of the discovery payload: component id -> config, for each of ``labels`` HA can use.

    Labels outside the specification (early meters' SINST1...), the address, PRM and DATE get no entity.

    >>> c = components("standard", "064468368739", ["EAST", "PREF", "LTARF", "ADSC"])
    >>> sorted(c)
    ['east', 'ltarf', 'pref']
    >>> c["east"]["device_class"], c["east"]["state_class"], c["east"]["unit_of_measurement"]
    ('energy', 'total_increasing', 'Wh')
    >>> c["pref"]["unit_of_measurement"], c["pref"]["value_template"]
    ('VA', "{% if 'PREF' in value_json['values'] %}{{ value_json['values']['PREF'] * 1000 }}{% endif %}")
    """
    out: dict[str, dict[str, Any]] = {}
    for label in labels:
        if label in _NOT_ENTITIES:
            continue
        spec = spec_for(mode, label)
        if spec is None:
            continue
        if label == "RELAIS":
            out.update(_relays(meter))
            continue
        cfg = _sensor(spec, meter)
        if cfg is not None:
            out[field_key(label)] = cfg
    return out


def usable_labels(mode: str, values: Mapping[str, object]) -> set[str]:
    """The labels of ``values`` that deserve an entity: known ones, except indexes still at 0 (unused tariffs)."""
    return {
        label
        for label, value in values.items()
        if label not in _NOT_ENTITIES
        and spec_for(mode, label) is not None
        and not (is_index(mode, label) and value == 0)
    }


def discovery_payload(
    meter: str,
    mode: str,
    labels: Iterable[str],
    *,
    state: str,
    availability: str,
    qos: int = 1,
) -> dict[str, Any]:
    """The device discovery message of ``meter`` (publish it retained on :func:`discovery_topic`).

    ``state`` and ``availability`` are the topics (:func:`state_topic`, :func:`availability_topic`); they and
    ``qos`` are shared by every component.
    """
    model = "Linky (TIC standard)" if mode == "standard" else "Linky (TIC historique)"
    return {
        "dev": {"ids": [f"linky_{meter}"], "name": f"Linky {meter}", "mf": "Enedis", "mdl": model, "sn": meter},
        "o": dict(ORIGIN),
        "state_topic": state,
        "availability_topic": availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": qos,
        "cmps": components(mode, meter, sorted(labels)),
    }


# --- state -------------------------------------------------------------------------------------------------
def state_payload(frame_json: dict[str, Any], dropped: Iterable[str] = ()) -> dict[str, Any]:
    """The state message: ``frame_json`` (``Frame.to_json()``) without the ``dropped`` labels.

    A dropped label leaves ``values`` and ``units`` and is listed in ``invalid``, like a group that failed a
    check: consumers see that the meter sent it, and no value they could mistake for a reading.
    """
    dropped = [d for d in dropped if d in frame_json["values"]]
    if not dropped:
        return frame_json
    out = dict(frame_json)
    out["values"] = {k: v for k, v in frame_json["values"].items() if k not in dropped}
    if "units" in out:
        out["units"] = {k: v for k, v in out["units"].items() if k not in dropped}
    out["invalid"] = [*frame_json["invalid"], *dropped]
    return out


@dataclass(frozen=True, slots=True)
class IndexGuard:
    """The last published value and time of each energy index of one meter; immutable, so a caller can keep
    the state before a publish and go back to it if the broker never acknowledged.

    ``max_power_w`` bounds how fast an index may rise: 100 kW is nearly three times the largest Linky contract
    (36 kVA), and ``slack_s`` seconds of it are always allowed (reception jitter).

    >>> g = IndexGuard()
    >>> dropped, g = g.check("standard", {"EAST": 1000, "SINSTS": 300}, 0.0)
    >>> dropped, g.last["EAST"]
    ([], (1000, 0.0))
    >>> g.check("standard", {"EAST": 999}, 1.0)[0]          # lower: HA would read a reset
    ['EAST']
    >>> g.check("standard", {"EAST": 900_000_000}, 2.0)[0]  # a corrupted digit, not consumption
    ['EAST']
    >>> g.check("standard", {"EAST": 1003}, 3.0)[1].last["EAST"]
    (1003, 3.0)
    """

    last: Mapping[str, tuple[int, float | None]] = field(default_factory=dict)
    max_power_w: float = 100_000.0
    slack_s: float = 5.0

    def check(self, mode: str, values: Mapping[str, object], at: float | None) -> tuple[list[str], IndexGuard]:
        """The index labels of ``values`` to drop, and the guard updated with the ones kept."""
        dropped: list[str] = []
        last = dict(self.last)
        for label, value in values.items():
            if not isinstance(value, int) or not is_index(mode, label):
                continue
            prev = last.get(label)
            if prev is not None:
                prev_value, prev_at = prev
                if value < prev_value:
                    dropped.append(label)
                    continue
                if at is not None and prev_at is not None:
                    hours = (max(0.0, at - prev_at) + self.slack_s) / 3600
                    if value - prev_value > self.max_power_w * hours:
                        dropped.append(label)
                        continue
            last[label] = (value, at)
        return dropped, IndexGuard(last, self.max_power_w, self.slack_s)
