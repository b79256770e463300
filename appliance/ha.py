"""Home Assistant MQTT discovery for a Linky meter, and the state filter that keeps its energy dashboard right.

Pure: topics, payloads and filters only; :mod:`appliance.outputs.mqtt.output` does the publishing.  The layout is the
contract of ``docs/DATA_FORMAT.md`` §4 and follows docs/NETWORK.md §1:

* **Device-based discovery** (HA >= 2024.12): one retained message per meter on
  ``<prefix>/device/linky_<meter>/config`` whose ``cmps`` hold one component per label HA can use, plus the
  derived Tempo colours and the relays the meter uses.  ``dev`` and ``o`` are mandatory; every ``unique_id``
  starts with the meter id, so two meters on one broker never collide; the entity id is given both ways, as
  ``default_entity_id`` (HA >= 2025.10) and ``object_id`` (HA 2024.12-2025.9; ignored without a warning since).
* **State**: every component reads the frame's JSON on ``<base>/<meter>/state`` through a ``value_template``.
  A label missing from a frame never becomes 0, nor an invalid option: numeric sensors render ``""``, which HA
  ignores (it keeps the last value); text and enum sensors render their current state when it is a real one,
  else ``None``; warnings that only exist while they last (ADPS, ADIR1-3, PEJP) and mobile-peak dates render
  ``None``, which HA shows as unknown.  Relays render ``""``, which a binary sensor ignores.
* **Availability**: one topic per appliance, ``<base>/bridge/<client id>/status``, driven by the MQTT last will
  (retained ``online``/``offline``).  The last will must be set before connecting, when the meter is not known
  yet, and a per-client topic keeps two appliances on one broker from marking each other's meter offline.
* **Units**: energy indexes are ``energy``/``total_increasing``/``Wh``; PREF and PCOUP, which the TIC gives in
  **kVA**, are converted to VA by their template (HA's ``apparent_power`` only knows VA), while the state JSON
  keeps the meter's kVA like ``teleinfo decode``; tariff text has no unit and no state class; closed sets are
  ``enum`` with readable options (PTEC's periods, DEMAIN's colours), the meter's code in an attribute.

:class:`IndexGuard` drops an energy index lower than the last one published (``total_increasing`` reads any
decrease as a meter reset and would count the whole index again as consumption), and one rising faster than
any Linky can count, so that a corrupted reading can never become a baseline that blocks the real ones.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any, Final

from appliance import __version__
from appliance.lineproto import field_key
from appliance.tariff.periods import PERIOD_NAMES, PTEC_PERIODS, colour_of
from appliance.tic.fields import decode_stge
from appliance.tic.labels import Kind, LabelSpec, spec_for

if TYPE_CHECKING:
    from appliance.tic import Frame

__all__ = [
    "NOT_ANNOUNCED",
    "ORIGIN",
    "TEMPO_TODAY",
    "TEMPO_TOMORROW",
    "IndexGuard",
    "availability_topic",
    "components",
    "device",
    "discovery_payload",
    "discovery_topic",
    "is_index",
    "legal_time",
    "state_payload",
    "state_topic",
    "tariff_components",
    "tariff_discovery_payload",
    "tariff_discovery_topic",
    "tariff_state_topic",
    "update_topic",
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
#: TIC unit -> (device_class, HA unit, state_class) for the integer kinds (docs/NETWORK.md §1.4).  VArh has no device
#: class on purpose: ``reactive_energy`` only exists since HA 2025.6, and older versions refuse the whole entity.
_BY_UNIT: Final[dict[str, tuple[str | None, str, str | None]]] = {
    "Wh": ("energy", "Wh", "total_increasing"),
    "VArh": (None, "varh", "total_increasing"),
    "VA": ("apparent_power", "VA", "measurement"),
    "kVA": ("apparent_power", "VA", None),  # x1000 in the template
    "W": ("power", "W", "measurement"),
    "A": ("current", "A", "measurement"),
    "V": ("voltage", "V", "measurement"),
    "min": ("duration", "min", None),
}
#: Mobile-peak start and end (standard mode): their horodate is the state (``timestamp``), not their value.
_PEAK_DATES: Final = frozenset(f"{p}{i}" for p in ("DPM", "FPM") for i in (1, 2, 3))
#: Free text of the supplier or the meter: runs of spaces collapsed in the state, the text as sent in ``raw``.
_FREE_TEXT: Final = frozenset({"NGTF", "LTARF", "MSG1", "MSG2"})
NOT_ANNOUNCED: Final = "Non annoncée"
_COLOURS: Final = {"blue": "Bleu", "white": "Blanc", "red": "Rouge"}
#: Codes whose state is a readable name (enum), the code itself kept in the ``code`` attribute.
_READABLE: Final[dict[str, dict[str, str]]] = {
    "PTEC": {code: PERIOD_NAMES[period] for code, period in PTEC_PERIODS.items()},
    "DEMAIN": {"----": NOT_ANNOUNCED, "BLEU": "Bleu", "BLAN": "Blanc", "ROUG": "Rouge"},
}
#: OPTARIF is read from its decoded contract (``tariff.contract``): ``BBRx`` has 32 spellings.
_CONTRACT_NAMES: Final = {"BASE": "Base", "HC": "Heures creuses", "EJP": "EJP", "TEMPO": "Tempo"}
_TEMPO_PTEC: Final = {code: _COLOURS[c] for code, p in PTEC_PERIODS.items() if (c := colour_of(p)) is not None}
#: Entities derived from a register rather than one label (ids in lowercase: never a TIC label).
TEMPO_TODAY: Final = "tempo_today"
TEMPO_TOMORROW: Final = "tempo_tomorrow"
_RELAYS: Final = 8
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")
#: Legal time in France: what a horodate without a season (DPM/FPM) is expressed in.
_LEGAL_TIME: list[tzinfo] = []  # Europe/Paris, loaded with zoneinfo on first use (most meters never need it)


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


def update_topic(base: str, client_id: str) -> str:
    """``<base>/bridge/<client id>/update``: the appliance's running version, release, last update and pending
    reboot (retained JSON, docs/UPDATES.md); per appliance, like :func:`availability_topic`.

    >>> update_topic("teleinfo", "teleinfo-pi")
    'teleinfo/bridge/teleinfo-pi/update'
    """
    return f"{base}/bridge/{_SAFE_ID.sub('_', client_id)}/update"


def discovery_topic(prefix: str, meter: str) -> str:
    """``<prefix>/device/linky_<meter>/config`` (device-based discovery, retained)."""
    return f"{prefix}/device/linky_{meter}/config"


# --- entities ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1024)  # asked for every label of every frame; labels are few (bounded all the same)
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


#: Without a value in this message: HA's current state when it is a real one, else ``None`` (unknown).  A
#: non-numeric sensor takes an empty rendering as the state "", and an enum refuses "unknown" ("Ignoring invalid
#: option"); ``None`` is the payload every sensor reads as "no value" (HA >= 2024.10, core PR #127032).
_KEEP_TEXT: Final = "{% elif this.state not in ['unknown', 'unavailable'] %}{{ this.state }}{% else %}None{% endif %}"
_KEEP_OPTION: Final = "{% elif this.state in m.values() %}{{ this.state }}{% else %}None{% endif %}"


def _text_template(label: str, collapse: bool = False) -> str:
    value = _value(label) + (".split() | join(' ')" if collapse else "")
    return f"{{% if {_present(label)} %}}{{{{ {value} }}}}{_KEEP_TEXT}"


def _enum_template(present: str, code: str, names: Mapping[str, str]) -> str:
    """The readable name of ``code`` (an expression) while ``present`` holds, else the state kept (or None)."""
    table = json.dumps(dict(names), ensure_ascii=False)
    return f"{{% set m = {table} %}}{{% if {present} %}}{{{{ m.get({code}, 'None') }}}}{_KEEP_OPTION}"


def _attributes(label: str, key: str, topic: str) -> dict[str, str]:
    """``json_attributes``: the meter's ``label`` as sent, under ``key`` (kept while a frame lacks it)."""
    template = f"{{{{ {{'{key}': {_value(label)} if {_present(label)} else this.attributes.get('{key}')}} | tojson }}}}"
    return {"json_attributes_topic": topic, "json_attributes_template": template}


def _ids(platform: str, meter: str, key: str) -> dict[str, str]:
    """unique_id and the entity id, as HA 2025.10+ (``default_entity_id``) and older versions (``object_id``,
    ignored from 2026.4 on) read it; without either, HA < 2025.10 builds the id from the names."""
    return {
        "unique_id": f"{meter}_{key}",
        "object_id": f"linky_{meter}_{key}",
        "default_entity_id": f"{platform}.linky_{meter}_{key}",
    }


def _sensor(spec: LabelSpec, meter: str, topic: str | None) -> dict[str, Any]:
    label = spec.label
    key = field_key(label)
    cfg: dict[str, Any] = {"p": "sensor", "name": f"{spec.meaning} ({label})", **_ids("sensor", meter, key)}
    if label in _DIAGNOSTIC:
        cfg["entity_category"] = "diagnostic"
    if label in _PEAK_DATES:
        cfg["device_class"] = "timestamp"
        stamp = f"value_json['timestamps']['{label}']"
        cfg["value_template"] = (
            f"{{% if '{label}' in value_json['timestamps'] %}}{{{{ {stamp} }}}}{{% else %}}None{{% endif %}}"
        )
        return cfg
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
    names: Mapping[str, str] | None = _READABLE.get(label)
    if names is None and spec.kind is Kind.ENUM:
        names = {c: c for c in spec.choices}  # a closed set of codes without names (HHPHC)
    if label == "OPTARIF":
        cfg["device_class"] = "enum"
        cfg["options"] = list(_CONTRACT_NAMES.values())
        contract = "value_json['tariff']['contract']"
        cfg["value_template"] = _enum_template("'tariff' in value_json", contract, _CONTRACT_NAMES)
        if topic:
            cfg.update(_attributes(label, "code", topic))
        return cfg
    if names is not None:
        cfg["device_class"] = "enum"
        cfg["options"] = list(dict.fromkeys(names.values()))
        cfg["value_template"] = _enum_template(_present(label), _value(label), names)
        if topic and label in _READABLE:
            cfg.update(_attributes(label, "code", topic))
        return cfg
    cfg["value_template"] = _text_template(label, collapse=label in _FREE_TEXT)  # text, unitless numbers
    if topic and label in _FREE_TEXT:
        cfg.update(_attributes(label, "raw", topic))
    return cfg


def _tempo(mode: str, meter: str, key: str) -> dict[str, Any]:
    """Today's or tomorrow's Tempo colour: STGE bits 24-27 (standard), PTEC and DEMAIN (historique)."""
    today = key == TEMPO_TODAY
    if mode == "standard":
        bits = f"value_json['stge']['{key}']"
        names = dict(_COLOURS) if today else {"": NOT_ANNOUNCED, **_COLOURS}
        template = _enum_template("'stge' in value_json", bits if today else f"({bits} or '')", names)
    elif today:
        names = _TEMPO_PTEC
        template = _enum_template(_present("PTEC"), _value("PTEC"), names)
    else:
        names = _READABLE["DEMAIN"]
        template = _enum_template(_present("DEMAIN"), _value("DEMAIN"), names)
    return {
        "p": "sensor",
        "name": "Couleur Tempo aujourd'hui" if today else "Couleur Tempo demain",
        **_ids("sensor", meter, key),
        "device_class": "enum",
        "options": list(dict.fromkeys(names.values())),
        "value_template": template,
    }


def _relay(meter: str, n: int) -> dict[str, Any]:
    """Relay ``n`` (1 = the dry contact) from the decoded ``relais`` array; an empty rendering when a frame lacks
    RELAIS, which a binary sensor ignores (it keeps its state)."""
    return {
        "p": "binary_sensor",
        "name": f"Relais {n}",
        **_ids("binary_sensor", meter, f"relais_{n}"),
        "value_template": (
            f"{{% if 'relais' in value_json %}}{{{{ 'ON' if value_json['relais'][{n - 1}] else 'OFF' }}}}{{% endif %}}"
        ),
    }


def components(
    mode: str, meter: str, labels: Iterable[str], attributes_topic: str | None = None
) -> dict[str, dict[str, Any]]:
    """The ``cmps`` of the discovery payload: component id -> config, for each of ``labels`` HA can use.

    ``labels`` are TIC labels and the derived entities :func:`usable_labels` names (``tempo_today``,
    ``tempo_tomorrow``, ``relais_<n>``).  Labels outside the specification (early meters' SINST1...), the
    address, PRM, DATE and RELAIS itself (its relays are entities of their own) get no entity.
    ``attributes_topic`` (the state topic) adds the meter's codes and raw text as attributes.

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
        if label in (TEMPO_TODAY, TEMPO_TOMORROW):
            out[label] = _tempo(mode, meter, label)
            continue
        if label.startswith("relais_") and label[7:].isdigit() and 1 <= int(label[7:]) <= _RELAYS:
            out[label] = _relay(meter, int(label[7:]))
            continue
        if label in _NOT_ENTITIES or label == "RELAIS":
            continue
        spec = spec_for(mode, label)
        if spec is None:
            continue
        out[field_key(label)] = _sensor(spec, meter, attributes_topic)
    return out


def _tempo_shown(mode: str, values: Mapping[str, object]) -> bool:
    """Whether the frame says Tempo colours: STGE's colour bits (standard), a Tempo PTEC or DEMAIN (historique)."""
    if mode == "standard":
        stge = values.get("STGE")
        if not isinstance(stge, str):
            return False
        try:
            bits = decode_stge(stge)
        except ValueError:
            return False
        return bits["tempo_today"] is not None or bits["tempo_tomorrow"] is not None
    return values.get("PTEC") in _TEMPO_PTEC or "DEMAIN" in values


@functools.lru_cache(maxsize=1024)
def _is_entity(mode: str, label: str) -> bool:
    """A label Home Assistant gets a sensor for (RELAIS is split into relays, apart)."""
    return label not in _NOT_ENTITIES and label != "RELAIS" and spec_for(mode, label) is not None


def usable_labels(mode: str, values: Mapping[str, object]) -> set[str]:
    """The entities ``values`` calls for: its known labels, except indexes still at 0 (unused tariffs); the Tempo
    colours once the meter gives one; ``relais_<n>`` for each relay RELAIS shows closed (a relay the meter never
    uses gets no entity).

    >>> sorted(usable_labels("standard", {"EAST": 5, "EASF02": 0, "RELAIS": 5, "STGE": "013A0001"}))
    ['EAST', 'STGE', 'relais_1', 'relais_3', 'tempo_today', 'tempo_tomorrow']
    """
    out = {
        label
        for label, value in values.items()
        if _is_entity(mode, label) and not (value == 0 and is_index(mode, label))
    }
    relais = values.get("RELAIS")
    if mode == "standard" and isinstance(relais, int):
        out |= {f"relais_{n}" for n in range(1, _RELAYS + 1) if relais >> (n - 1) & 1}
    if _tempo_shown(mode, values):
        out |= {TEMPO_TODAY, TEMPO_TOMORROW}
    return out


def device(meter: str, mode: str | None) -> dict[str, Any]:
    """The ``dev`` block of every discovery message about ``meter`` (the same in each, so none overwrites another).

    ``sw`` (HA's ``sw_version``, shown on the device page) is the running appliance's version: the software that
    reads this meter, which an update changes (the new process publishes discovery again when it connects)."""
    model = {"standard": "Linky (TIC standard)", "historique": "Linky (TIC historique)"}.get(mode or "", "Linky")
    return {
        "ids": [f"linky_{meter}"],
        "name": f"Linky {meter}",
        "mf": "Enedis",
        "mdl": model,
        "sn": meter,
        "sw": __version__,
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
    return _device_message(meter, mode, components(mode, meter, sorted(labels), state), state, availability, qos)


def _device_message(
    meter: str, mode: str | None, cmps: dict[str, Any], state: str, availability: str, qos: int
) -> dict[str, Any]:
    """A device discovery message: the meter's device, the origin, and what every component shares."""
    return {
        "dev": device(meter, mode),
        "o": dict(ORIGIN),
        "state_topic": state,
        "availability_topic": availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": qos,
        "cmps": cmps,
    }


# --- the tariff record ----------------------------------------------------------------------------------
def tariff_state_topic(base: str, meter: str) -> str:
    """``<base>/<meter>/tariff``: the tariff record (docs/TARIFF.md section 5), retained."""
    return f"{base}/{meter}/tariff"


def tariff_discovery_topic(prefix: str, meter: str) -> str:
    """``<prefix>/device/linky_<meter>_tariff/config``: the tariff entities, on the meter's own HA device."""
    return f"{prefix}/device/linky_{meter}_tariff/config"


def _money_template(path: str) -> str:
    return f"{{% if {path} is none %}}None{{% else %}}{{{{ {path} }}}}{{% endif %}}"


def _period_template(scope: str, period: str, key: str) -> str:
    """A period's ``wh`` or ``cost`` today or this month; 0 when nothing was counted in it (zero energy costs
    nothing, whatever its price), ``None`` when its energy has no price."""
    entry = f"value_json['{scope}']['periods'].get('{period}')"
    if key == "wh":
        return f"{{% set e = {entry} %}}{{{{ e['wh'] if e else 0 }}}}"
    cost = "{% if not e %}0.0{% elif e['cost'] is none %}None{% else %}{{ e['cost'] }}{% endif %}"
    return f"{{% set e = {entry} %}}{cost}"


def _counter(
    meter: str, key: str, name: str, scope: str, template: str, money: str | None
) -> tuple[str, dict[str, Any]]:
    """An energy (Wh) or money total that starts again each day or month: ``total`` with ``last_reset`` (the
    scope's local midnight), the only state class HA allows for ``monetary``."""
    cfg: dict[str, Any] = {"p": "sensor", "name": name, **_ids("sensor", meter, key)}
    if money is None:
        cfg.update(device_class="energy", unit_of_measurement="Wh")
    else:
        cfg.update(device_class="monetary", unit_of_measurement=money, suggested_display_precision=2)
    cfg["state_class"] = "total"
    cfg["last_reset_value_template"] = f"{{{{ value_json['{scope}']['start'] }}}}"
    cfg["value_template"] = template
    return key, cfg


_SCOPES: Final = (("today", "aujourd'hui"), ("month", "ce mois-ci"))


def tariff_components(
    meter: str, currency: str, periods: Iterable[str], attributes_topic: str | None = None
) -> dict[str, dict[str, Any]]:
    """The tariff entities of ``meter``: the price per kWh now (the Energy dashboard's "entity with the current
    price": unit ``<currency>/kWh``, which ``monetary`` does not allow, so no device class), the period now
    (readable, its key in ``code``), and energy and cost today and this month, in total and for each of
    ``periods``.

    >>> c = tariff_components("064468368739", "EUR", ["hc", "hp"])
    >>> c["tariff_price"]["unit_of_measurement"], "device_class" in c["tariff_price"]
    ('EUR/kWh', False)
    >>> c["tariff_hc_cost_month"]["device_class"], c["tariff_hc_cost_month"]["state_class"]
    ('monetary', 'total')
    """
    price: dict[str, Any] = {
        "p": "sensor",
        "name": "Prix du kWh en cours",
        **_ids("sensor", meter, "tariff_price"),
        "unit_of_measurement": f"{currency}/kWh",
        "state_class": "measurement",
        "suggested_display_precision": 4,
        "value_template": "{% if value_json['price'] %}{{ value_json['price']['value'] }}{% else %}None{% endif %}",
    }
    period: dict[str, Any] = {
        "p": "sensor",
        "name": "Période tarifaire en cours",
        **_ids("sensor", meter, "tariff_period"),
        "device_class": "enum",
        "options": list(PERIOD_NAMES.values()),
        "value_template": f"{{% set m = {json.dumps(PERIOD_NAMES, ensure_ascii=False)} %}}"
        "{{ m.get(value_json['period'] or '', 'None') }}",
    }
    if attributes_topic:
        price["json_attributes_topic"] = period["json_attributes_topic"] = attributes_topic
        price["json_attributes_template"] = "{{ (value_json['price'] or {}) | tojson }}"
        period["json_attributes_template"] = (
            "{{ {'code': value_json['period'], 'label': value_json['period_label']} | tojson }}"
        )
    out = {"tariff_price": price, "tariff_period": period}
    for scope, when in _SCOPES:
        for key, name, template, money in (
            ("energy", f"Énergie {when}", f"{{{{ value_json['{scope}']['wh'] }}}}", None),
            ("cost", f"Coût de l'énergie {when}", _money_template(f"value_json['{scope}']['cost']"), currency),
            ("total", f"Coût {when}, abonnement compris", _money_template(f"value_json['{scope}']['total']"), currency),
        ):
            k, cfg = _counter(meter, f"tariff_{key}_{scope}", name, scope, template, money)
            out[k] = cfg
    for p in periods:
        label = PERIOD_NAMES.get(p, p)
        for scope, when in _SCOPES:
            for key, name, money in (("energy", "Énergie", None), ("cost", "Coût", currency)):
                template = _period_template(scope, p, "wh" if money is None else "cost")
                k, cfg = _counter(meter, f"tariff_{p}_{key}_{scope}", f"{name} {label} {when}", scope, template, money)
                out[k] = cfg
    return out


def tariff_discovery_payload(
    meter: str,
    mode: str | None,
    currency: str,
    periods: Iterable[str],
    *,
    state: str,
    availability: str,
    qos: int = 1,
) -> dict[str, Any]:
    """The discovery message of the tariff entities (publish it retained on :func:`tariff_discovery_topic`).

    Its ``dev`` is the meter's (:func:`device`), so HA shows the costs on the meter's device; ``state`` is
    :func:`tariff_state_topic`.  The Tempo colours are the meter's own entities (``tempo_today``,
    ``tempo_tomorrow``), not repeated here.
    """
    cmps = tariff_components(meter, currency, periods, attributes_topic=state)
    return _device_message(meter, mode, cmps, state, availability, qos)


# --- state -------------------------------------------------------------------------------------------------
def legal_time(horodate: str) -> str:
    """A horodate without a season (DPM/FPM: French legal time) with the offset it has in France that day, which
    HA's ``timestamp`` sensors require; any other text is returned as it is.

    >>> legal_time("2025-01-23T06:00:00"), legal_time("2025-07-01T06:00:00+02:00")
    ('2025-01-23T06:00:00+01:00', '2025-07-01T06:00:00+02:00')
    """
    try:
        t = datetime.fromisoformat(horodate)
    except ValueError:
        return horodate
    if t.tzinfo is not None:
        return horodate
    if not _LEGAL_TIME:
        from zoneinfo import ZoneInfo

        _LEGAL_TIME.append(ZoneInfo("Europe/Paris"))
    return t.replace(tzinfo=_LEGAL_TIME[0]).isoformat()


def state_body(frame: Frame, dropped: Sequence[str] = ()) -> bytes:
    """The state message's bytes: :func:`state_payload` of the frame, compact UTF-8 JSON.  When it would change
    nothing (no value dropped, no season-less DPM/FPM horodate to complete) that is the frame's own JSON, shared
    with every other output that sends it (:meth:`~appliance.tic.Frame.json_bytes`)."""
    if not dropped and not any(k in _PEAK_DATES for k in frame.timestamps):
        return frame.json_bytes()
    return json.dumps(state_payload(frame.to_json(), dropped), ensure_ascii=False, separators=(",", ":")).encode()


def state_payload(frame_json: dict[str, Any], dropped: Iterable[str] = ()) -> dict[str, Any]:
    """The state message: ``frame_json`` (``Frame.to_json()``) without the ``dropped`` labels, and with the
    offset of French legal time on the horodates the meter sends without a season (DPM1-3, FPM1-3).

    A dropped label leaves ``values`` and ``units`` and is listed in ``invalid``, like a group that failed a
    check: consumers see that the meter sent it, and no value they could mistake for a reading.
    """
    dropped = [d for d in dropped if d in frame_json["values"]]
    stamps = frame_json.get("timestamps") or {}
    local = {k: legal_time(v) for k, v in stamps.items() if k in _PEAK_DATES}
    local = {k: v for k, v in local.items() if v != stamps[k]}
    if not dropped and not local:
        return frame_json
    out = dict(frame_json)
    if local:
        out["timestamps"] = {**stamps, **local}
    if dropped:
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
